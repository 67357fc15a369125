#!/usr/bin/env python
"""The hard benchmark: this model against a plain 1D-ResNet on synthetic data that can tell models apart.

    python bench/bench_quality.py [--train-records 2000] [--test-records 500] [--short-test-records 300] [--epochs 30]
                                  [--models small resnet small:pooling=mean small:crop=window ...]
                                  [--readings whole windows ...] [--work DIR] [--out FILE]
                                  [--seed N] [--train-seed N] [--train-only]

Training data: --train-records hard-mode records (ecgmamba.synthetic, hard=True) of 10 s at 257/500/1000 Hz.
Test data: --test-records hard-mode records of 6-60 s at the same rates, ectopic beats anywhere in the record.
Every model is trained by the same loop for the same epochs (the package's crops and sample-budget batches,
lead-set masking, the preset's time warps (the ResNet's: none), weighted BCE leaving out what a warp hides,
train.py's AdamW with the preset's weight-decay scope (the ResNet's: matrices only); warm-up and cosine decay),
then run on the test records of every lead
set with the package's inference, each lead set as its own model (the shared network sliced, BatchNorm statistics
re-estimated for it; `mixed BN` keeps the shared statistics). Readings: `whole` (the record in one pass),
`windows` (half-overlapping 8.2 s windows, averaged), `mixed BN` (whole, without re-estimated statistics), and
`chunks10:AGG` (10 s chunks aggregated by AGG, on 12 and 2 leads only: what a record longer than the cap gets).
Printed per model, reading and lead set: macro AUROC and AUPRC over the classes present, over the rhythm classes
PAC, PVC, SA and AF, and the rhythm-class and SA AUPRC of records of 10 s or less (the test records' and
--short-test-records more of 6-10 s: the main set alone holds too few) and of test records longer than 20 s. Each
trained network's weights are saved in --work as SPEC.pt (SPEC.seedN.pt for a --train-seed other than --seed,
SPEC.eE... for --epochs E other than 30; --train-only stops there). The
generated data stays in --work for the next run, described in its data.json; a run asking for other data stops.
--train-eval N also prints the rhythm classes' AUPRC on N of the training records (12 leads): a class the network
fits there but not on the test records is not generalised. For each ECGMamba model it also prints sinus
arrhythmia's AUPRC within each sinus rate (normal, bradycardia, tachycardia; 12 leads) and where its PAC and PVC
evidence lies.
A model is `resnet` or a preset with overrides after a colon: ModelConfig fields, the training settings `crop`
(`variable` or `window`), `max_crop_seconds`, `batch_size` (in windows), `weight_decay` and `weight_decay_scope`,
`noise_augment`, `wander_augment`, `time_warp`, `warp_share` and `rhythm_target` (the weight of the auxiliary RR-variability
loss, which also gives the network its `rhythm_head`), the benchmark's own `ema` (keep a moving average
of the weights with this decay per step; tried once and lost), and the preprocessing's `scaling`, e.g.
`small:pooling=mean,position=none,crop=window,scaling=record`.
"""

import argparse
import json
import os
import re
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ecgmamba.cache import build_cache  # noqa: E402
from ecgmamba.inference import predict_many  # noqa: E402
import dataclasses  # noqa: E402
from ecgmamba.metrics import compute_auc  # noqa: E402
from ecgmamba.model import ECGMamba, PRESET_SAMPLING_RATES, count_parameters, preset_config  # noqa: E402
from ecgmamba.preprocess import PreprocessConfig, preprocess_recording  # noqa: E402
from ecgmamba.records import LEAD_SETS, TWELVE_LEADS, read_header, read_signal, select_leads  # noqa: E402
from ecgmamba.scoring import encode_labels, load_scoring  # noqa: E402
from ecgmamba.synthetic import (AF, MIXED_RATE_WEIGHTS, MIXED_RATES, PAC, PVC, SA, SB, SR, STACH,  # noqa: E402
                                generate_dataset, generate_record, write_record)
from ecgmamba.augment import episodic_classes, warp_keeps  # noqa: E402
from ecgmamba.train import (TrainConfig, WindowDataset, classification_loss, crop_plan, learning_rate,  # noqa: E402
                            make_optimizer, positive_weights, recalibrate_batchnorm, rhythm_loss, specialise)

RHYTHM_CLASSES = {"PAC": PAC, "PVC": PVC, "SA": SA, "AF": AF}
SINUS_RATES = (("normal rate", SR), ("bradycardia", SB), ("tachycardia", STACH))  # where sinus arrhythmia occurs


class ResNet1D(nn.Module):
    """A plain 1D-ResNet baseline (about 0.5 M parameters): a strided stem, four stages of two residual blocks,
    global mean + max pooling, one linear head. Kept in bench/: it is the yardstick, not part of the package."""

    class Config:
        def __init__(self, num_classes):
            self.num_classes = num_classes

    class Block(nn.Module):
        def __init__(self, channels_in, channels, stride):
            super().__init__()
            self.conv1 = nn.Conv1d(channels_in, channels, 7, stride, 3, bias=False)
            self.bn1 = nn.BatchNorm1d(channels)
            self.conv2 = nn.Conv1d(channels, channels, 7, 1, 3, bias=False)
            self.bn2 = nn.BatchNorm1d(channels)
            self.skip = (nn.Sequential(nn.Conv1d(channels_in, channels, 1, stride, bias=False), nn.BatchNorm1d(channels))
                         if stride != 1 or channels_in != channels else nn.Identity())

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            return F.relu(self.bn2(self.conv2(y)) + self.skip(x))

    def __init__(self, num_leads=12, num_classes=26, widths=(32, 48, 72, 96)):
        super().__init__()
        self.config = self.Config(num_classes)
        self.stem = nn.Sequential(nn.Conv1d(num_leads, widths[0], 15, 2, 7, bias=False), nn.BatchNorm1d(widths[0]),
                                  nn.ReLU(), nn.MaxPool1d(3, 2, 1))
        blocks, channels = [], widths[0]
        for i, width in enumerate(widths):
            blocks += [self.Block(channels, width, 1 if i == 0 else 2), self.Block(width, width, 1)]
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        h = self.blocks(self.stem(x))
        return self.head(0.5 * (h.mean(-1) + h.amax(-1)))


TRAINING_KEYS = ("crop", "max_crop_seconds", "min_crop_seconds", "batch_size", "lr", "weight_decay", "weight_decay_scope",
                 "noise_augment", "wander_augment", "time_warp", "warp_share", "rhythm_target")
PREPROCESS_KEYS = ("scaling",)


def spec_values(spec):
    """(preset, {key: value}) of a model spec such as small:time_warp=0.3,depth=[3,2]."""
    preset, _, overrides = spec.partition(":")
    values = {}
    for item in filter(None, re.split(r",(?![^\[]*\])", overrides)):  # commas inside [3,2] are a value's
        key, _, value = item.partition("=")
        values[key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    return preset, values


def build_model(spec, num_classes):
    """(network, preset, training overrides, preprocessing overrides) for a model spec."""
    preset, values = spec_values(spec)
    values.pop("ema", None)  # the benchmark's own training option (see train)
    training = {k: values.pop(k) for k in TRAINING_KEYS if k in values}
    preprocessing = {k: values.pop(k) for k in PREPROCESS_KEYS if k in values}
    if preset == "resnet":  # trained at 250 Hz like small, but decaying matrices only and unwarped, as it was measured
        return (ResNet1D(num_classes=num_classes), "small", {"weight_decay_scope": "matrices", "time_warp": 0.0,
                                                              **training}, preprocessing)
    if training.get("rhythm_target", 0) > 0:  # the auxiliary target needs its head, as training_code builds it
        values["rhythm_head"] = True
    return ECGMamba(preset_config(preset, num_classes=num_classes, **values)), preset, training, preprocessing


def peak_lr(spec):
    """The spec's `lr`, else the peak each network was first measured with (small's 3e-3, the ResNet's 1e-3)."""
    preset, values = spec_values(spec)
    return float(values.get("lr", 1e-3 if preset == "resnet" else 3e-3))


def write_test_set(directory, n, seed, seconds=(6.0, 60.0), prefix="HARDTE"):
    """n hard-mode records of `seconds` (uniform) at mixed rates; returns {record id: ectopic beat times}."""
    os.makedirs(directory, exist_ok=True)
    events = {}
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(n)):
        rng = np.random.default_rng(child)
        fs = int(rng.choice(MIXED_RATES, p=MIXED_RATE_WEIGHTS))
        signal, labels, age, sex, ectopic = generate_record(rng, fs, float(rng.uniform(*seconds)), hard=True,
                                                            return_events=True)
        record_id = f"{prefix}{i + 1:05d}"
        write_record(directory, record_id, signal, fs, labels, age, sex)
        events[record_id] = ectopic
    return events


def write_paired_test_sets(directory, n, seed, short=(6.0, 10.0), long=(20.0, 60.0)):
    """n patients, each recorded twice at one rate: a record of `short` seconds in directory/short and one of `long`
    seconds in directory/long, both named HARDPA{i}. The generator draws labels, heart rate, axis, morphology and
    intervals before anything that depends on the length, so the pair shares all of them and differs in the beats,
    the noise and the length: comparing the two sets measures what length costs, free of which patients each holds.
    Returns {"short": events, "long": events}, each {record id: beat times} as write_test_set's."""
    events = {"short": {}, "long": {}}
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(n)):
        rng = np.random.default_rng(child)
        fs = int(rng.choice(MIXED_RATES, p=MIXED_RATE_WEIGHTS))
        seconds = {"short": float(rng.uniform(*short)), "long": float(rng.uniform(*long))}
        patient = rng.integers(2 ** 63)
        record_id = f"HARDPA{i + 1:05d}"
        for part in ("short", "long"):
            signal, labels, age, sex, beats = generate_record(np.random.default_rng(patient), fs, seconds[part],
                                                             hard=True, return_events=True)
            os.makedirs(os.path.join(directory, part), exist_ok=True)
            write_record(os.path.join(directory, part), record_id, signal, fs, labels, age, sex)
            events[part][record_id] = beats
    return events


def train(model, cache, preprocess, epochs, config, lr, table, ema=0.0):
    """Trains `model` in place. ema > 0 (a spec's `ema=0.999`, not a TrainConfig field yet): the weights kept at the
    end are an exponential moving average of the weights after each step, with that decay per step, an experiment
    against the run-to-run spread; BatchNorm statistics are re-estimated afterwards anyway (LeadSetModels)."""
    average = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema)) if ema else None
    dataset = WindowDataset(cache, np.arange(len(cache)), preprocess.window_samples, TWELVE_LEADS, LEAD_SETS,
                            config.seed, config.noise_augment, config.wander_augment, config.time_warp,
                            warp_keeps(table), episodic_classes(table) if config.min_crop_seconds else None,
                            config.warp_share, rhythm=config.rhythm_target > 0)
    optimizer = make_optimizer(model, lr, config.weight_decay, config.weight_decay_scope)
    pos_weight = positive_weights(cache.labels)
    plan = crop_plan(config, preprocess, cache.lengths, (0, 1, 0))
    total = max(1, sum(len(plan(epoch)) for epoch in range(epochs)))
    step = 0
    for epoch in range(epochs):
        torch.manual_seed(config.seed * 100003 + epoch)  # as train.py: drop-path draws per epoch, resumable
        dataset.set_epoch(epoch)
        model.train()
        loader = DataLoader(dataset, batch_sampler=plan(epoch))
        for x, y, valid, *rhythm in loader:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total, lr, 0.05)
            if rhythm:  # as train.py: the auxiliary RR-variability target beside the classes
                logits, predicted = model(x.float(), valid, with_rhythm=True)
                loss = (classification_loss(logits, y, "weighted_bce", pos_weight)
                        + config.rhythm_target * rhythm_loss(predicted, rhythm[0]))
            else:
                logits = model(x.float(), valid) if isinstance(model, ECGMamba) else model(x.float())
                loss = classification_loss(logits, y, "weighted_bce", pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if average is not None:
                average.update_parameters(model)
            step += 1
    if average is not None:
        with torch.no_grad():
            for kept, averaged in zip(model.parameters(), average.module.parameters()):
                kept.copy_(averaged)
    return model.eval()


READINGS = ("whole", "windows", "mixed BN", "chunks10:mean", "chunks10:max", "chunks10:noisy_or",
            "chunks10:logit_mean")


def reading_config(preprocess, reading):
    """The inference settings of a reading (see the module docstring)."""
    if reading == "windows":
        return dataclasses.replace(preprocess, inference="windows", aggregation="mean")
    if reading.startswith("chunks10:"):
        return dataclasses.replace(preprocess, inference="whole", max_whole_seconds=10.0,
                                   aggregation=reading.split(":")[1])
    return dataclasses.replace(preprocess, inference="whole")


class LeadSetModels:
    """Each lead set's network as train_model.py saves it: the shared network sliced to the leads, with its
    BatchNorm statistics re-estimated on training records seen with those leads (or not: mixed=True). The
    baseline ResNet has no slicing: it is fed zeros for the absent leads, with its mixed statistics."""

    def __init__(self, model, cache, preprocess, config, records=512):
        self.model, self.cache, self.preprocess, self.config = model, cache, preprocess, config
        self.recalibration = np.random.default_rng(config.seed).permutation(len(cache))[:records]
        self.networks = {}

    def __call__(self, leads, mixed=False):
        if not isinstance(self.model, ECGMamba):
            return self.model, False
        key = (leads, mixed)
        if key not in self.networks:
            network = specialise(self.model, leads)
            if not mixed:
                recalibrate_batchnorm(network, self.cache, self.recalibration, leads, self.preprocess, self.config,
                                      self.config.seed)
            self.networks[key] = network.eval()
        return self.networks[key], True


def predict(network, signals, config):
    """(records, classes) probabilities on the CPU, in calls of 64 records."""
    return np.concatenate([predict_many(network, signals[i:i + 64], config, torch.device("cpu"))
                           for i in range(0, len(signals), 64)])


def evaluate(models, test_records, preprocess, table, reading, short_records=()):
    """{lead count: {metric: value}} on the test records, each lead set by its own model (LeadSetModels). The
    short-record column reads the test records of 10 s or less together with `short_records` (6-10 s): the main
    set alone holds about 40 of them, 3-6 per rhythm class, too few for an AUPRC to mean much."""
    test_records = list(test_records) + list(short_records)
    main = np.arange(len(test_records)) < len(test_records) - len(short_records)
    labels = encode_labels([r["labels"] for r in test_records], table)
    durations = np.array([r["seconds"] for r in test_records])
    config = reading_config(preprocess, reading)
    lead_sets = [s for s in LEAD_SETS if len(s) in (12, 2)] if reading.startswith("chunks") else LEAD_SETS
    results = {}
    for leads in lead_sets:
        network, sliced = models(leads, mixed=reading == "mixed BN")
        signals = lead_set_signals(test_records, leads, sliced, preprocess)
        results[len(leads)] = metric_row(labels, predict(network, signals, config), durations, main, table)
    return results


def lead_set_signals(test_records, leads, sliced, preprocess):
    """The records as a network of `leads` reads them: their rows (sliced), or all 12 with the others zero."""
    rows = [TWELVE_LEADS.index(lead) for lead in leads]
    if preprocess.scaling == "record":  # the scale depends on the leads present: preprocess the reduced record
        reduced = [preprocess_recording(r["raw"][rows], r["fs"], preprocess) for r in test_records]
        if sliced:
            return reduced
        signals = [np.zeros((12, x.shape[1]), np.float32) for x in reduced]
        for x, y in zip(signals, reduced):
            x[rows] = y
        return signals
    # every step is per lead: the reduced record's preprocessing is the 12-lead one's rows
    mask = np.array([lead in leads for lead in TWELVE_LEADS], dtype=np.float32)[:, None]
    return [r["signal"][rows] if sliced else r["signal"] * mask for r in test_records]


def metric_row(labels, probabilities, durations, main, table):
    """{metric: value} of one lead set's probabilities: over the `main` test records, by rhythm class, and for
    records of 10 s or less (short ones included) against main records over 20 s."""
    rhythm = [table.code_to_index()[code] for code in RHYTHM_CLASSES.values()]
    auroc, auprc, auroc_classes, auprc_classes = compute_auc(labels[main], probabilities[main])
    row = {"AUROC": auroc, "AUPRC": auprc,
           "rhythm AUROC": float(np.nanmean(auroc_classes[rhythm])),
           "rhythm AUPRC": float(np.nanmean(auprc_classes[rhythm]))}
    for name, j in zip(RHYTHM_CLASSES, rhythm):
        row[f"{name} AUPRC"] = float(auprc_classes[j])
    for name, chosen in (("<=10 s", durations <= 10.0), (">20 s", main & (durations > 20.0))):
        _, _, _, part = compute_auc(labels[chosen], probabilities[chosen])
        row[f"rhythm AUPRC {name}"] = float(np.nanmean(part[rhythm]))
        row[f"SA AUPRC {name}"] = float(part[rhythm[list(RHYTHM_CLASSES).index("SA")]])
    row["short records"] = int(np.sum(durations <= 10.0))
    return row


def read_test_set(directory, preprocess, limit=None):
    records = []
    for name in sorted(f for f in os.listdir(directory) if f.endswith(".hea"))[:limit]:
        header = read_header(os.path.join(directory, name))
        signal = select_leads(read_signal(os.path.join(directory, name[:-4] + ".mat"), header), header.leads,
                              TWELVE_LEADS)
        records.append({"id": name[:-4], "labels": header.labels, "seconds": header.num_samples / header.fs,
                        "signal": preprocess_recording(signal, header.fs, preprocess),
                        "raw": signal if preprocess.scaling == "record" else None, "fs": header.fs})
    return records


def training_fit(network, train_dir, n, preprocess, table):
    """The rhythm classes' AUPRC on n of the network's own training records (12 leads, whole reading): next to the
    test figures, it says whether a class is not learnt or learnt and not generalised."""
    records = read_test_set(train_dir, preprocess, limit=n)
    labels = encode_labels([r["labels"] for r in records], table)
    config = reading_config(preprocess, "whole")
    probabilities = predict(network, [r["signal"] for r in records], config)
    _, _, _, auprc = compute_auc(labels, probabilities)
    parts = []
    for name, code in RHYTHM_CLASSES.items():
        j = table.code_to_index()[code]
        parts.append(f"{name} {auprc[j]:.3f}")
    return f"AUPRC on {len(records)} of its training records, 12 leads: " + ", ".join(parts)


def sa_by_rate(network, test_records, preprocess, table):
    """Sinus arrhythmia's AUPRC within each sinus rate (12 leads, whole reading). Its depth is a fraction of the RR
    interval, so at 140 bpm the swings are a few tens of ms, under the token spacing: the rates tell apart a
    network that cannot time beats finely from one that has not learnt the pattern."""
    config = reading_config(preprocess, "whole")
    probabilities = predict(network, [r["signal"] for r in test_records], config)
    j = table.code_to_index()[SA]
    parts = []
    for name, code in SINUS_RATES:
        chosen = np.array([code in r["labels"] for r in test_records], dtype=bool)
        positive = np.array([SA in r["labels"] for r in test_records], dtype=bool)[chosen]
        if not 0 < positive.sum() < positive.size:
            parts.append(f"{name} - ({int(positive.sum())} of {positive.size})")
            continue
        _, auprc, _, _ = compute_auc(positive[:, None].astype(np.float64), probabilities[chosen, j][:, None])
        parts.append(f"{name} {auprc:.3f} ({int(positive.sum())} of {positive.size})")
    return "SA AUPRC by sinus rate (SA records of all), 12 leads: " + ", ".join(parts)


def evidence_hits(model, test_records, events, preprocess, table, tolerance=0.3):
    """{class: (hits, records)}: for each test record labelled PAC (PVC), whether the time of the strongest token
    evidence for that class lies within `tolerance` s of a beat the generator made ectopic."""
    from ecgmamba.explain import token_evidence

    out = {}
    for name, code, kind in (("PAC", PAC, "pac"), ("PVC", PVC, "pvc")):
        j = table.code_to_index()[code]
        hits = total = 0
        for record in test_records:
            beats = events.get(record["id"], {}).get(kind, [])
            if code not in record["labels"] or not beats:
                continue
            times, evidence = token_evidence(model, record["signal"], preprocess, torch.device("cpu"))
            strongest = times[int(np.argmax(evidence[:, j]))]
            hits += int(np.min(np.abs(np.asarray(beats) - strongest)) <= tolerance)
            total += 1
        out[name] = (hits, total)
    return out


def check_work_data(args):
    """A work folder keeps its generated data between runs; asking it for other data must fail, not reuse it."""
    wanted = {"seed": args.seed, "train_records": args.train_records, "test_records": args.test_records}
    path = os.path.join(args.work, "data.json")
    if os.path.exists(path):
        with open(path) as f:
            held = json.load(f)
        held = {key: held.get(key) for key in wanted}
        if held != wanted:
            sys.exit(f"{args.work} holds data generated with {held}, not {wanted}: use another --work "
                     f"(--train-seed repeats a model on the same data)")
    elif os.path.isdir(os.path.join(args.work, "train")):
        sys.exit(f"{args.work} holds data from an older run with no data.json: write one naming its seed, "
                 f"train_records and test_records, or use another --work")
    else:
        os.makedirs(args.work, exist_ok=True)
        with open(path, "w") as f:
            json.dump(wanted, f)


def short_test_dir(work, count, data_seed):
    """The folder of `count` extra test records of 6-10 s in `work`, written first if absent. Record i depends on
    the data seed and i only, so a larger set begins with the records of a smaller one."""
    directory = os.path.join(work, f"test_short_{count}")
    if not os.path.isdir(directory):
        write_test_set(directory, count, data_seed + 2, seconds=(6.0, 10.0), prefix="HARDSH")
    return directory


def weights_path(work, spec, train_seed, data_seed, epochs=30):
    """Where a trained model's state dict is kept in `work`: SPEC.pt, SPEC.seedN.pt for another training seed,
    SPEC.eE[.seedN].pt for E epochs other than 30 (a short run must not overwrite a full one)."""
    name = (re.sub(r"[^\w.=,-]+", "_", spec) + (f".e{epochs}" if epochs != 30 else "")
            + (f".seed{train_seed}" if train_seed != data_seed else ""))
    return os.path.join(work, name + ".pt")


def trained_weights(work, spec, train_seed=None, epochs=30):
    """(weights path, data seed, training seed) of a network bench_quality.py trained in `work` (train_seed None:
    the data's, from its data.json); exits naming the file, and the command that trains it, when it is missing."""
    with open(os.path.join(work, "data.json")) as f:
        data_seed = json.load(f)["seed"]
    train_seed = data_seed if train_seed is None else train_seed
    path = weights_path(work, spec, train_seed, data_seed, epochs)
    if not os.path.isfile(path):
        sys.exit(f"{path}: no such weights; train them with bench_quality.py --work {work} --models {spec!r}"
                 + (f" --train-seed {train_seed}" if train_seed != data_seed else "")
                 + (f" --epochs {epochs}" if epochs != 30 else ""))
    return path, data_seed, train_seed


def prepare(spec, table, work, batch_size, train_seed):
    """(untrained network, preprocessing, training settings, training cache) for a model spec; the cache of the
    training records in `work` is built once per sampling rate, window and scaling and shared by the specs."""
    model, preset, training, preprocessing = build_model(spec, table.num_classes)
    fs = PRESET_SAMPLING_RATES[preset]
    window = model.config.num_samples if hasattr(model.config, "num_samples") else preset_config(preset).num_samples
    preprocess = PreprocessConfig(target_fs=fs, window_samples=window, **preprocessing)
    config = TrainConfig(**{"preset": preset, "device": "cpu", "batch_size": batch_size, "seed": train_seed,
                            **training}).resolved()
    cache = build_cache(os.path.join(work, "train"), os.path.join(work, f"cache_{fs}_{window}_{preprocess.scaling}"),
                        preprocess, table, max_seconds=60.0, progress=False, log=lambda message: None)
    return model, preprocess, config, cache


def print_table(text, out=None):
    """The whole Markdown once more at the end, where a long run's log is read first; also into `out` if given."""
    print("\n" + text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-records", type=int, default=2000)
    parser.add_argument("--test-records", type=int, default=500)
    parser.add_argument("--short-test-records", type=int, default=300,
                        help="extra test records of 6-10 s, read only for the short-record column")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--models", nargs="+", default=["small", "resnet"])
    parser.add_argument("--readings", nargs="+", default=list(READINGS), choices=READINGS)
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument("--train-seed", type=int,
                        help="seed of initialisation, crops and augmentation (default --seed): repeat a model on the "
                             "same data to see its spread")
    parser.add_argument("--work", default="/tmp/ecgmamba_bench_quality")
    parser.add_argument("--train-eval", type=int, default=0,
                        help="also read the first N training records with the 12-lead network: how far it fits them")
    parser.add_argument("--train-only", action="store_true",
                        help="train and save the weights only (bench_ensemble.py reads them)")
    parser.add_argument("--out", help="also write the Markdown table here")
    args = parser.parse_args()
    train_seed = args.seed if args.train_seed is None else args.train_seed
    table = load_scoring("2021")
    check_work_data(args)
    train_dir, test_dir = os.path.join(args.work, "train"), os.path.join(args.work, "test")
    if not os.path.isdir(train_dir):
        generate_dataset(train_dir, args.train_records, seed=args.seed, fs="mixed", prefix="HARDTR", hard=True)
    if not os.path.isdir(test_dir):
        events = write_test_set(test_dir, args.test_records, args.seed + 1)
        with open(os.path.join(args.work, "test_events.json"), "w") as f:
            json.dump(events, f)
    short_dir = short_test_dir(args.work, args.short_test_records, args.seed)

    lines = [f"Hard benchmark: {args.train_records} training records (10 s), {args.test_records} test records "
             f"(6-60 s) and {args.short_test_records} more of 6-10 s for the short-record columns, {args.epochs} epochs, batch budget {args.batch_size} windows, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, data seed {args.seed}, training seed {train_seed}.", "",
             "| model | params | train s | reading | leads | AUROC | AUPRC | rhythm AUROC | rhythm AUPRC | PAC | PVC | SA "
             "| AF | rhythm AUPRC <=10 s | rhythm AUPRC >20 s | SA <=10 s | SA >20 s |", "|---|---:|---:|---|---:|" + "---:|" * 12]
    notes = []
    for spec in args.models:
        torch.manual_seed(train_seed)
        model, preprocess, config, cache = prepare(spec, table, args.work, args.batch_size, train_seed)
        test_records, short_records = read_test_set(test_dir, preprocess), read_test_set(short_dir, preprocess)
        lr = peak_lr(spec)
        started = time.perf_counter()
        train(model, cache, preprocess, args.epochs, config, lr, table, spec_values(spec)[1].get("ema", 0.0))
        seconds = time.perf_counter() - started
        torch.save(model.state_dict(), weights_path(args.work, spec, train_seed, args.seed, args.epochs))
        if args.train_only:
            cells = [spec, f"{count_parameters(model) / 1e6:.2f} M", f"{seconds:.0f}", "(not read)"] + [""] * 13
            lines.append("| " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
            continue
        models = LeadSetModels(model, cache, preprocess, config)
        readings = args.readings if isinstance(model, ECGMamba) else [r for r in args.readings if r != "mixed BN"]
        for reading in readings:
            for leads, row in evaluate(models, test_records, preprocess, table, reading, short_records).items():
                lines.append(f"| {spec} | {count_parameters(model) / 1e6:.2f} M | {seconds:.0f} | {reading} | {leads} | "
                             + " | ".join(f"{row[k]:.3f}" for k in (
                                 "AUROC", "AUPRC", "rhythm AUROC", "rhythm AUPRC", "PAC AUPRC", "PVC AUPRC",
                                 "SA AUPRC", "AF AUPRC", "rhythm AUPRC <=10 s", "rhythm AUPRC >20 s",
                                 "SA AUPRC <=10 s", "SA AUPRC >20 s")) + " |")
                print(lines[-1], flush=True)
        if isinstance(model, ECGMamba):
            with open(os.path.join(args.work, "test_events.json")) as f:
                events = json.load(f)
            network, _ = models(TWELVE_LEADS)
            if args.train_eval:
                notes.append(f"{spec}: " + training_fit(network, train_dir, args.train_eval, preprocess, table))
                print(notes[-1], flush=True)
            notes.append(f"{spec}: " + sa_by_rate(network, test_records, preprocess, table))
            print(notes[-1], flush=True)
            for name, (hits, total) in evidence_hits(network, test_records, events, preprocess, table).items():
                notes.append(f"{spec}: strongest {name} evidence within 0.3 s of a marked ectopic beat in {hits} of "
                             f"{total} {name} records ({100 * hits / max(total, 1):.0f} %), 12 leads")
            print(notes[-2] + "\n" + notes[-1], flush=True)
    print_table("\n".join(lines + [""] + notes), args.out)


if __name__ == "__main__":
    main()
