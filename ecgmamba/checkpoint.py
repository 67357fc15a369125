"""Model files: tensors in safetensors, everything else in JSON, written atomically.

Nothing here unpickles: loading a model folder never executes code from it. Every write goes to a temporary file in
the same folder and is renamed into place, so a kill mid-save leaves the previous file (or none), never half a file.
Every tensor file carries the SHA-256 of its tensors in its metadata and is checked against it when loaded, so a
damaged file is named instead of giving silently wrong weights; a JSON file that goes with a tensor file records the
same digest, so a pair from two different saves (a kill between the two renames) is caught too.
"""

import hashlib
import json
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file


class ModelFileError(ValueError):
    """A model file is missing, truncated or inconsistent; the message names the file."""


def _atomic(path, write):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    try:  # make the rename itself durable (a kill needs only the above; a power cut needs this)
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def save_json(path, data):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")

    _atomic(path, write)


def load_json(path):
    """A JSON object (dict); ModelFileError naming the file if it is missing, unreadable or not an object."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{path}: file not found") from None
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read ({error.strerror or error})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFileError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def tensors_digest(tensors):
    """SHA-256 (hex) of named CPU tensors: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def save_tensors(path, tensors, metadata=None):
    """Write tensors atomically with their digest in the file's metadata; returns the digest."""
    tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    metadata = {**(metadata or {}), "sha256": tensors_digest(tensors)}
    _atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return metadata["sha256"]


def load_tensors(path, device="cpu", with_metadata=False):
    """Tensors of a safetensors file (and its metadata dict with with_metadata=True), checked against the digest
    saved with them; ModelFileError naming the file if it is missing, truncated or damaged."""
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: file not found")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{path}: unreadable or truncated weight file ({error})") from None
    if "sha256" in metadata and tensors_digest(tensors) != metadata["sha256"]:
        raise ModelFileError(f"{path}: damaged weight file (its tensors do not match the checksum saved with them)")
    if str(device) != "cpu":
        tensors = {name: t.to(device) for name, t in tensors.items()}
    return (tensors, metadata) if with_metadata else tensors


def save_checkpoint(path, tensors, meta):
    """Tensors and their JSON-able description in one atomic file, so no kill can pair one save's tensors with
    another save's description."""
    return save_tensors(path, tensors, {"meta": json.dumps(meta, sort_keys=True)})


def load_checkpoint(path, device="cpu"):
    """(tensors, meta) of a file written by save_checkpoint."""
    tensors, metadata = load_tensors(path, device, with_metadata=True)
    try:
        return tensors, json.loads(metadata["meta"])
    except (KeyError, ValueError):
        raise ModelFileError(f"{path}: not a checkpoint (no description in its metadata)") from None


def load_described_tensors(path, expected_digest=None, device="cpu"):
    """load_tensors, also refusing a file whose digest is not `expected_digest` (recorded by the JSON written
    with it)."""
    state, metadata = load_tensors(path, device, with_metadata=True)
    if expected_digest is not None and metadata.get("sha256") != expected_digest:
        raise ModelFileError(f"{path}: these weights are not the ones its JSON description was saved with "
                             "(a save was interrupted between the two files?); train again")
    return state


def load_state_into(module, path, device="cpu", expected_digest=None):
    """Load a safetensors state dict into `module`, naming missing or unexpected tensors on mismatch.
    expected_digest: the digest the file must carry (recorded by the JSON written with it)."""
    return load_state_dict_checked(module, load_described_tensors(path, expected_digest, device), path)


def load_state_dict_checked(module, state, path):
    """module.load_state_dict(state), naming `path` and the missing, unexpected or misshapen tensors on mismatch."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ModelFileError(
            f"{path}: weights do not fit the model config "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]})"
        )
    module.load_state_dict(state)
    return module


def optimizer_to_tensors(optimizer):
    """AdamW-style optimizer state as flat tensors + JSON-able param groups (no pickle)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(optimizer, tensors, meta):
    state = {}
    for name, value in tensors.items():
        if not name.startswith("optimizer."):
            continue
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
