"""Inference: a model folder and a recording in, the Challenge's (classes, labels, probabilities) out.

A record is preprocessed exactly as in training and read whole, in one pass, up to PreprocessConfig's
max_whole_seconds: a rhythm finding (one early beat, sinus arrhythmia over several breaths) belongs to the whole
record, and the selective scan costs time linear in length. A longer record (a 30-minute Holter) is read in equal
chunks of at most that length and their probabilities aggregated, so memory stays bounded. `inference: "windows"`
keeps the earlier reading (overlapping fixed windows, averaged). A record shorter than one window is zero-padded and
the padding left out of the pooling.
"""

import dataclasses
import os

import numpy as np
import torch

from ecgmamba import checkpoint
from ecgmamba.model import AveragedNetworks, ECGMamba, ModelConfig, network_for, report_backends
from ecgmamba.preprocess import PreprocessConfig, aggregate, preprocess_recording, record_segments
from ecgmamba.records import (TWELVE_LEADS, RecordError, parse_header, select_leads, standard_leads,
                              to_millivolts)


PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def resolve_precision(precision, device):
    """'auto' -> bf16 on a GPU that has it (A100, H100, H200), fp16 on one that does not (T4, V100), fp32 on the CPU."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("precision 'bf16': this GPU has no bfloat16 (a T4 or V100?); use fp16 or auto")
    return precision


def autocast(device, precision):
    """The autocast context for a resolved precision ('fp32': none)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def model_file_stem(leads):
    return "model_" + "-".join(leads)


def save_lead_model(model_directory, leads, model, table, thresholds, preprocess, extra=None, base=None):
    """Weights (safetensors) + everything needed to use them (JSON) for one lead set; returns the weights' digest.
    The JSON, written second, records that digest: a kill between the two writes leaves a pair that load_model
    refuses.

    base: (leads, network, digest) of a model saved before in the same folder (the 12-lead one). The shared strategy
    gives every lead set the 12-lead network sliced, with its own BatchNorm statistics; five full copies of `paper`
    take 500 MB. So when most of this model's tensors equal the base's, sliced to these leads, only the others are
    written, and the JSON names the base by its digest and records the digest of the whole state for load_model
    to check after rebuilding it."""
    from ecgmamba.train import sliced_state

    stem = os.path.join(model_directory, model_file_stem(leads))
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    description = {}
    if base is not None:
        base_leads, base_network, base_digest = base
        reference = sliced_state({name: tensor.detach().cpu() for name, tensor in base_network.state_dict().items()},
                                 leads)
        own = {name: tensor for name, tensor in state.items()
               if not (name in reference and reference[name].shape == tensor.shape
                       and torch.equal(reference[name], tensor))}
        if sum(t.nbytes for t in own.values()) <= sum(t.nbytes for t in state.values()) // 2:
            description = {"base": {"leads": list(base_leads), "weights_sha256": base_digest},
                           "state_sha256": checkpoint.tensors_digest(state)}
            state = own
    digest = checkpoint.save_tensors(stem + ".safetensors", state)
    checkpoint.save_json(stem + ".json", {
        "weights_sha256": digest,
        **description,
        "leads": list(leads),
        "classes": table.class_codes,
        "thresholds": [float(t) for t in thresholds],
        "model": model.config.to_dict(),
        "members": len(model.members) if isinstance(model, AveragedNetworks) else 1,
        "preprocess": preprocess.to_dict(),
        **(extra or {}),
    })
    return digest


class LoadedModel:
    """A model ready to run on recordings with `leads` (the header order of the records it will see)."""

    def __init__(self, network, model_leads, classes, thresholds, preprocess, device, prior=None, precision="fp32"):
        self.network, self.model_leads, self.precision = network, tuple(model_leads), precision
        self.classes, self.thresholds = list(classes), np.asarray(thresholds, dtype=np.float64)
        self.preprocess, self.device = preprocess, device
        # Training prevalence per class: the answer for a recording whose signal cannot be used.
        self.prior = np.zeros(len(self.classes)) if prior is None else np.asarray(prior, dtype=np.float64)


def load_model(model_directory, leads, device=None):
    """The model trained for `leads`; for a lead set without its own file, the 12-lead model sliced to those
    leads (the shared model was trained with absent leads zeroed, so slicing is exact).

    Only the standard leads among `leads` count (records.standard_leads): a duplicated name counts once, an
    unknown name is ignored, as run_model reads the first row of a duplicated lead and ignores unknown ones. With
    no standard lead at all, the 12-lead model is returned and run_model refuses each such recording by name: the
    organizers' driver loads models outside its try/except, so one odd header must not stop their whole run."""
    from ecgmamba.train import specialise

    leads = standard_leads(leads) or TWELVE_LEADS
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    stem = os.path.join(model_directory, model_file_stem(leads))
    sliced = not os.path.isfile(stem + ".json")
    if sliced:
        stem = os.path.join(model_directory, model_file_stem(TWELVE_LEADS))
        if not os.path.isfile(stem + ".json"):
            raise checkpoint.ModelFileError(f"{model_directory}: no model for leads {leads} and no 12-lead model")
    meta = checkpoint.load_json(stem + ".json")
    try:
        config = ModelConfig.from_dict(meta["model"])
        preprocess = PreprocessConfig.from_dict(meta["preprocess"])
        classes, thresholds, model_leads = list(meta["classes"]), list(meta["thresholds"]), tuple(meta["leads"])
        prior = meta.get("prior")
        members = meta.get("members", 1)  # files saved before ensembles were possible hold one network
        if isinstance(members, bool) or not isinstance(members, int) or members < 1:
            raise ValueError(f"members {members!r} is not a count of networks")
        if not len(classes) == len(thresholds) == config.num_classes:
            raise ValueError(f"{len(classes)} classes and {len(thresholds)} thresholds for a network with "
                             f"{config.num_classes} outputs")
        if prior is not None and len(prior) != len(classes):
            raise ValueError(f"{len(prior)} prior values for {len(classes)} classes")
    except (KeyError, TypeError, ValueError) as error:
        raise checkpoint.ModelFileError(f"{stem}.json: incomplete or invalid model description ({error})") from None
    if "base" in meta:
        network = _load_on_base(model_directory, stem, meta, config, members)
    else:
        network = checkpoint.load_state_into(network_for(config, members), stem + ".safetensors",
                                             expected_digest=meta.get("weights_sha256"))
    if sliced:
        network, model_leads = specialise(network, leads), leads
    report_backends(device)
    return LoadedModel(network.to(device).eval(), model_leads, classes, thresholds, preprocess, device, prior,
                       inference_precision(meta, device))


def _load_on_base(model_directory, stem, meta, config, members=1):
    """A network saved as its differences from a base model in the same folder (save_lead_model's `base`): the base's
    tensors sliced to this model's leads, this file's tensors over them, checked against the whole state's digest."""
    from ecgmamba.train import sliced_state

    try:
        base_leads, base_digest = tuple(meta["base"]["leads"]), meta["base"]["weights_sha256"]
        leads, state_digest, own_digest = tuple(meta["leads"]), meta["state_sha256"], meta["weights_sha256"]
    except (KeyError, TypeError) as error:
        raise checkpoint.ModelFileError(f"{stem}.json: incomplete description of its base model ({error})") from None
    base_stem = os.path.join(model_directory, model_file_stem(base_leads))
    if checkpoint.load_json(base_stem + ".json").get("weights_sha256") != base_digest:
        raise checkpoint.ModelFileError(
            f"{stem}.json: stored as differences from {base_stem}.safetensors, which has been replaced since (a "
            "training into this folder interrupted between the two?); train again")
    base = checkpoint.load_described_tensors(base_stem + ".safetensors", base_digest)
    own = checkpoint.load_described_tensors(stem + ".safetensors", own_digest)
    try:
        state = {**sliced_state(base, leads), **own}
    except (KeyError, ValueError, IndexError) as error:
        raise checkpoint.ModelFileError(f"{base_stem}.safetensors: not a 12-lead network to slice ({error})") from None
    if checkpoint.tensors_digest(state) != state_digest:
        raise checkpoint.ModelFileError(f"{stem}.safetensors with {base_stem}.safetensors do not rebuild the weights "
                                        "it was saved with; train again")
    network = network_for(config, members)
    checkpoint.load_state_dict_checked(network, state, stem + ".safetensors")
    return network


def inference_precision(meta, device):
    """The precision the thresholds were tuned with, on the kind of device they were tuned on; on another kind
    (a GPU-trained model run on the CPU) that device's own default. Models saved before precision was recorded
    were tuned in bf16 on CUDA and fp32 on the CPU, which is what 'auto' gave them."""
    device = torch.device(device)
    tuned = meta.get("precision")
    if tuned is None or meta.get("precision_device") != device.type:
        if tuned is None and device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return resolve_precision("auto", device)
    return tuned


def segment_passes(signals, preprocess, batch_size=64):
    """(segments, passes) for preprocessed records (each (leads, n)): segments lists (record, start, real samples)
    as record_segments reads each record; passes yields (segment indices, input (b, leads, padded) float32, real
    samples (b,)). Segments of one length, from any records, share a pass of at most batch_size * window_samples
    samples, so memory is bounded whatever the lengths; a segment shorter than window_samples is zero-padded to it
    (the model masks the padding out of the pooling). Only segments of equal length share a pass: padding a record
    to another's length would put zeros in front of the backward scan."""
    segments = []
    for i, signal in enumerate(signals):
        starts, length = record_segments(signal.shape[1], preprocess)
        segments += [(i, int(start), length) for start in starts]
    groups = {}
    for k, (_, _, length) in enumerate(segments):
        groups.setdefault(max(length, preprocess.window_samples), []).append(k)

    def passes():
        budget = batch_size * preprocess.window_samples
        for padded, members in sorted(groups.items()):
            per_pass = max(1, budget // padded)
            for first in range(0, len(members), per_pass):
                chosen = members[first:first + per_pass]
                x = np.zeros((len(chosen), signals[segments[chosen[0]][0]].shape[0], padded), dtype=np.float32)
                for row, k in enumerate(chosen):
                    i, start, length = segments[k]
                    x[row, :, :length] = signals[i][:, start:start + length]
                yield chosen, x, np.array([segments[k][2] for k in chosen])

    return segments, passes()


@torch.no_grad()
def predict_many(network, signals, preprocess, device, batch_size=64, precision="fp32"):
    """Probabilities for several preprocessed records (each (leads, n)), each read as record_segments says (in the
    passes of segment_passes) and its segments' outputs aggregated (PreprocessConfig.aggregation)."""
    num_classes = network.config.num_classes
    if not len(signals):
        return np.zeros((0, num_classes))
    segments, passes = segment_passes(signals, preprocess, batch_size)
    masked = isinstance(network, (ECGMamba, AveragedNetworks))  # others (the benchmark's baseline) take the input alone
    logits = np.zeros((len(segments), num_classes))
    network.eval()
    for chosen, x, valid in passes:
        x = torch.from_numpy(x).to(device)
        with autocast(device, precision):
            out = network(x, torch.from_numpy(valid)) if masked else network(x)
        logits[chosen] = out.float().cpu().numpy()
    owners = np.array([i for i, _, _ in segments])
    probabilities = 1.0 / (1.0 + np.exp(-logits))
    return np.stack([aggregate(probabilities[owners == i], logits[owners == i], preprocess.aggregation)
                     for i in range(len(signals))])


def predict_cached(network, cache, indices, model_leads, preprocess, device, active_leads=None,
                   max_windows=None, precision="fp32", chunk_windows=1024):
    """Probabilities for cached (already preprocessed) records, as inference would give them. With
    active_leads, the model's other input leads are zeroed (a reduced-lead record seen by a 12-lead model) and,
    with "record" scaling, the record is scaled by those leads alone, as inference would scale it; max_windows
    overrides the preprocessing's cap on segments per record (1: a quick look, for per-epoch checks).
    Records are taken in groups of at most chunk_windows windows' worth of samples (at least one record), so host
    memory stays bounded whatever the record lengths: 1024 paper windows are 400 MB of float32."""
    if max_windows is not None:
        preprocess = dataclasses.replace(preprocess, max_windows=max_windows)
    present = None if active_leads is None else np.array([lead in active_leads for lead in model_leads])
    out, group, group_samples = [], [], 0

    def flush():
        signals = [cache.model_input(int(i), model_leads, present) for i in group]
        out.append(predict_many(network, signals, preprocess, device, precision=precision))

    for i in indices:
        starts, length = record_segments(int(cache.lengths[int(i)]), preprocess)
        samples = len(starts) * max(length, preprocess.window_samples)
        if group and group_samples + samples > chunk_windows * preprocess.window_samples:
            flush()
            group, group_samples = [], 0
        group.append(i)
        group_samples += samples
    if group:
        flush()
    return np.concatenate(out) if out else np.zeros((0, network.config.num_classes))


def prepare(model, header_text, recording):
    """Header text + raw ADC recording -> preprocessed (model leads, n) float32. Non-finite samples are accepted
    (preprocessing interpolates them): inference answers for every record that has any signal."""
    header = parse_header(header_text)
    if not set(model.model_leads) & set(header.leads):
        raise RecordError(header.path, f"none of the model's leads {list(model.model_leads)} is among the "
                                       f"recording's leads {list(header.leads)}")
    signal = to_millivolts(np.asarray(recording), header, allow_non_finite=True)
    signal = select_leads(signal, header.leads, model.model_leads)
    return preprocess_recording(signal, header.fs, model.preprocess)


def run_model(model, header_text, recording):
    """The Challenge contract: (classes, labels, probabilities) for one recording."""
    return run_models(model, [header_text], [recording])[0]


def run_models(model, header_texts, recordings):
    """Batched run_model over several recordings (windows from all of them share forward passes)."""
    signals = [prepare(model, h, r) for h, r in zip(header_texts, recordings)]
    probabilities = predict_many(model.network, signals, model.preprocess, model.device,
                                 precision=getattr(model, "precision", "fp32"))
    return [(list(model.classes), [int(v) for v in p >= model.thresholds], [float(v) for v in p])
            for p in probabilities]
