"""Model files: tensors in safetensors, everything else in JSON, written atomically.

Nothing here unpickles: loading a model folder never executes code from it. Every write goes to a temporary file in
the same folder and is renamed into place, so a kill mid-save leaves the previous file (or none), never half a file.
"""

import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


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


def save_json(path, data):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")

    _atomic(path, write)


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFileError(f"{path}: not valid JSON ({error})") from None


def save_tensors(path, tensors, metadata=None):
    tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    _atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_tensors(path, device="cpu"):
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: file not found")
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{path}: unreadable or truncated weight file ({error})") from None


def load_state_into(module, path, device="cpu"):
    """Load a safetensors state dict into `module`, naming missing or unexpected tensors on mismatch."""
    state = load_tensors(path, device)
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
