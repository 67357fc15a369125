#!/usr/bin/env python
"""Where the short-record gap comes from: a network that bench_quality.py trained, read by record length and on
long records cut short, beside the RR-interval ceiling on the same cuts.

    python bench/bench_short_records.py --work DIR --model SPEC [--train-seed N] [--epochs E] [--short-records N]
                                        [--paired N] [--cuts 6 8 10 20] [--bootstrap 1000] [--out FILE]

--work is a folder where bench_quality.py trained SPEC: its generated data, cache and weights (SPEC.pt, or
SPEC.seedN.pt for a --train-seed other than the data's seed). The 12-lead network is read as bench_quality.py reads
it (sliced, BatchNorm statistics re-estimated, the whole record in one pass). Printed:

1. rhythm-class (PAC, PVC, SA, AF) and SA AUPRC by length band, over the test records and the short-record set
   together, with the number of SA records in each band; then bench_quality.py's short-record gap (records of 10 s
   or less against test records over 20 s) with a bootstrap interval, which says how much of it is sampling;
2. with --paired N, the same gap on N patients each recorded twice, for 6-10 s and for 20-60 s (bench_quality.py's
   write_paired_test_sets): the two sets hold the same labels, rates and morphologies, so the gap is what length
   costs, per class, with an interval from resampling the patients, beside the RR-interval ceiling's SA gap;
3. the test records longer than 20 s read as their first L seconds, for each cut L and whole, the network's SA and
   rhythm-class AUPRC beside the SA AUPRC of the ceiling (bench_rhythm_oracle.py's RR-interval spread among
   sinus-rhythm records, from the generator's beats inside the cut).

The cuts keep the records and change only how much of each the network sees, so the rows differ by length alone.
A network that loses much more SA than the ceiling as the cut shortens reads the beats of a short stretch less well
than it could; a drop only below one window points at the padding.
"""

import argparse
import glob
import json
import os
import re
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_quality import (RHYTHM_CLASSES, LeadSetModels, predict, prepare, print_table, read_test_set,  # noqa: E402
                           reading_config, short_test_dir, trained_weights, write_paired_test_sets)
from bench_rhythm_oracle import rr_variation  # noqa: E402

from ecgmamba.metrics import compute_auc  # noqa: E402
from ecgmamba.records import TWELVE_LEADS  # noqa: E402
from ecgmamba.scoring import encode_labels, load_scoring  # noqa: E402
from ecgmamba.synthetic import SA, SINUS_RHYTHMS  # noqa: E402

BANDS = ((6.0, 8.0), (8.0, 10.0), (10.0, 20.0), (20.0, 40.0), (40.0, 60.0))


def auprc_columns(labels, probabilities, rhythm, sa):
    """(rhythm-class AUPRC, SA AUPRC) of a subset; NaN where a class has no positive."""
    _, _, _, per_class = compute_auc(labels, probabilities)
    return float(np.nanmean(per_class[rhythm])), float(per_class[sa])


def bootstrap_gap(labels, probabilities, short, long, classes, resamples, seed=0):
    """Macro AUPRC over `classes` of the `long` records minus that of the `short` ones (boolean masks), and its 95 %
    interval from resampling each set's records with replacement (the resampled counts weigh the records)."""
    rng = np.random.default_rng(seed)

    def auprc(chosen, counts=None):
        _, _, _, per_class = compute_auc(labels[chosen][:, classes], probabilities[chosen][:, classes], counts)
        return float(np.nanmean(per_class))

    gaps = [auprc(long, rng.multinomial(long.sum(), np.full(long.sum(), 1.0 / long.sum())))
            - auprc(short, rng.multinomial(short.sum(), np.full(short.sum(), 1.0 / short.sum())))
            for _ in range(resamples)]
    return auprc(long) - auprc(short), np.percentile(gaps, [2.5, 97.5])


def paired_gap(short_labels, short_probabilities, long_probabilities, classes, resamples, seed=0):
    """(short AUPRC, long AUPRC, gap, 95 % interval of the gap): macro AUPRC over `classes` of two sets whose
    record i is the same patient (so `short_labels` serve both); each resample of the patients weighs a patient's
    two records alike."""
    rng = np.random.default_rng(seed)
    n = len(short_labels)

    def auprcs(counts=None):
        return [float(np.nanmean(compute_auc(short_labels[:, classes], p[:, classes], counts)[3]))
                for p in (short_probabilities, long_probabilities)]

    short, long = auprcs()
    gaps = []
    for _ in range(resamples):
        resampled_short, resampled_long = auprcs(rng.multinomial(n, np.full(n, 1.0 / n)))
        gaps.append(resampled_long - resampled_short)
    interval = np.percentile(gaps, [2.5, 97.5]) if gaps else (np.nan, np.nan)
    return short, long, long - short, interval


def paired_test_dir(work, count, data_seed):
    """(folder, beat times) of `count` patients recorded short and long in `work`, written first if absent; the
    events file is written last, so a folder without it is an interrupted write and is written again."""
    directory = os.path.join(work, f"test_paired_{count}")
    events_path = os.path.join(directory, "events.json")
    if not os.path.isfile(events_path):
        events = write_paired_test_sets(directory, count, data_seed + 3)
        with open(events_path, "w") as f:
            json.dump(events, f)
    with open(events_path) as f:
        return directory, json.load(f)


def paired_lines(network, whole, preprocess, table, work, count, data_seed, resamples):
    """The --paired section: per class, AUPRC of the short and the long records of the same patients and the gap."""
    directory, events = paired_test_dir(work, count, data_seed)
    short, long = (read_test_set(os.path.join(directory, part), preprocess) for part in ("short", "long"))
    if [r["labels"] for r in short] != [r["labels"] for r in long]:
        sys.exit(f"{directory}: the short and long records do not pair up (same labels in the same order); "
                 "delete the folder to write it again")
    index = table.code_to_index()
    labels = encode_labels([r["labels"] for r in short], table)
    short_p, long_p = (predict(network, [r["signal"] for r in part], whole) for part in (short, long))
    lines = [f"The same {count} patients recorded for 6-10 s and for 20-60 s ({os.path.basename(directory)}; "
             f"{int(labels[:, index[SA]].sum())} with SA), AUPRC, with a 95 % interval from {resamples} resamples of "
             "the patients:", "", "| classes | patients with it | 6-10 s | 20-60 s | gap | 95 % interval |",
             "|---|---:|---:|---:|---:|---:|"]
    rows = [("rhythm classes", [index[code] for code in RHYTHM_CLASSES.values()])]
    rows += [(name, [index[code]]) for name, code in RHYTHM_CLASSES.items()]
    for name, classes in rows:
        low_auprc, high_auprc, gap, (low, high) = paired_gap(labels, short_p, long_p, classes, resamples)
        lines.append(f"| {name} | {int(labels[:, classes].any(axis=1).sum())} | {low_auprc:.3f} | "
                     f"{high_auprc:.3f} | {gap:.3f} | {low:.3f} to {high:.3f} |")
        print(lines[-1], flush=True)
    ceiling = [ceiling_sa_auprc(part, events[name], None) for name, part in (("short", short), ("long", long))]
    lines.append(f"| SA, RR-interval ceiling | | {ceiling[0]:.3f} | {ceiling[1]:.3f} | {ceiling[1] - ceiling[0]:.3f} "
                 "| |")
    print(lines[-1], flush=True)
    return lines


def ceiling_sa_auprc(records, events, seconds):
    """SA AUPRC of the RR-interval spread among sinus-rhythm records, from the beats in the first `seconds`."""
    scores, positive = [], []
    for record in records:
        if not any(code in record["labels"] for code in SINUS_RHYTHMS):
            continue
        beats, kinds = np.asarray(events[record["id"]]["beats"]), events[record["id"]]["kinds"]
        inside = (beats >= 0.0) & (beats <= (seconds or record["seconds"]))
        scores.append(rr_variation(beats[inside], "".join(k for k, keep in zip(kinds, inside) if keep)))
        positive.append(SA in record["labels"])
    _, auprc, _, _ = compute_auc(np.array(positive, dtype=float)[:, None], np.array(scores)[:, None])
    return float(auprc)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="a bench_quality.py --work folder")
    parser.add_argument("--model", required=True,
                        help="the model spec bench_quality.py trained, e.g. small:time_warp=0.3")
    parser.add_argument("--train-seed", type=int, help="the --train-seed it was trained with (default: the data's)")
    parser.add_argument("--epochs", type=int, default=30, help="the --epochs it was trained for")
    parser.add_argument("--cuts", nargs="+", type=float, default=[6.0, 8.0, 10.0, 20.0],
                        help="seconds of each long test record to read")
    parser.add_argument("--short-records", type=int,
                        help="short-record set to read (test_short_N, written if absent with bench_quality.py's seed, "
                             "so a larger set extends the smaller one); default: the largest in --work")
    parser.add_argument("--paired", type=int, default=0,
                        help="patients recorded both short and long (test_paired_N, written if absent; 0: none)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="resamples for the interval of the short-record gap (0: none)")
    parser.add_argument("--out", help="also write the Markdown here")
    args = parser.parse_args()
    weights, data_seed, train_seed = trained_weights(args.work, args.model, args.train_seed, args.epochs)
    held = [int(m.group(1)) for path in glob.glob(os.path.join(args.work, "test_short_*"))
            if (m := re.fullmatch(r"test_short_(\d+)", os.path.basename(path)))]
    if args.short_records is None and not held:
        sys.exit(f"{args.work}: no test_short_* folder; bench_quality.py writes it")
    short_dir = short_test_dir(args.work, max(held) if args.short_records is None else args.short_records, data_seed)

    table = load_scoring("2021")
    model, preprocess, config, cache = prepare(args.model, table, args.work, 16, train_seed)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    network, _ = LeadSetModels(model, cache, preprocess, config)(TWELVE_LEADS)
    whole = reading_config(preprocess, "whole")
    test_records = read_test_set(os.path.join(args.work, "test"), preprocess)
    records = test_records + read_test_set(short_dir, preprocess)
    with open(os.path.join(args.work, "test_events.json")) as f:
        events = json.load(f)

    index = table.code_to_index()
    rhythm, sa = [index[code] for code in RHYTHM_CLASSES.values()], index[SA]
    labels = encode_labels([r["labels"] for r in records], table)
    probabilities = predict(network, [r["signal"] for r in records], whole)
    seconds = np.array([r["seconds"] for r in records])
    lines = [f"`{args.model}`, training seed {train_seed}, 12 leads, whole reading; {len(test_records)} test records "
             f"and {len(records) - len(test_records)} short ones ({os.path.basename(short_dir)})", "",
             "| record length | records | SA records | rhythm AUPRC | SA AUPRC |", "|---|---:|---:|---:|---:|"]
    for low, high in BANDS:
        chosen = (seconds > low) & (seconds <= high) if low > 6.0 else (seconds >= low) & (seconds <= high)
        if labels[chosen][:, sa].sum() == 0:
            continue
        columns = auprc_columns(labels[chosen], probabilities[chosen], rhythm, sa)
        lines.append(f"| {low:g}-{high:g} s | {int(chosen.sum())} | {int(labels[chosen][:, sa].sum())} | "
                     f"{columns[0]:.3f} | {columns[1]:.3f} |")
        print(lines[-1], flush=True)

    if args.bootstrap:
        short, long = seconds <= 10.0, (np.arange(len(records)) < len(test_records)) & (seconds > 20.0)
        lines += ["", f"How far records of 10 s or less fall below the test records over 20 s ({int(short.sum())} and "
                  f"{int(long.sum())} records), with a 95 % interval from {args.bootstrap} bootstrap resamples of "
                  "each set:", "", "| AUPRC | gap | 95 % interval |", "|---|---:|---:|"]
        for label, classes in (("rhythm classes", rhythm), ("SA", [sa])):
            gap, (low, high) = bootstrap_gap(labels, probabilities, short, long, classes, args.bootstrap)
            lines.append(f"| {label} | {gap:.3f} | {low:.3f} to {high:.3f} |")
            print(lines[-1], flush=True)

    if args.paired:
        lines += [""] + paired_lines(network, whole, preprocess, table, args.work, args.paired, data_seed,
                                     args.bootstrap)

    long_records = [r for r in test_records if r["seconds"] > 20.0]
    long_labels = encode_labels([r["labels"] for r in long_records], table)
    lines += ["", f"The {len(long_records)} test records longer than 20 s ({int(long_labels[:, sa].sum())} with SA), "
              "read as their first L seconds:", "",
              "| read | rhythm AUPRC | SA AUPRC | SA AUPRC, RR-interval ceiling |", "|---|---:|---:|---:|"]
    fs = preprocess.target_fs
    for cut in list(args.cuts) + [None]:
        signals = [r["signal"][:, :int(round(cut * fs))] if cut else r["signal"] for r in long_records]
        columns = auprc_columns(long_labels, predict(network, signals, whole), rhythm, sa)
        lines.append(f"| {'first %g s' % cut if cut else 'whole'} | {columns[0]:.3f} | {columns[1]:.3f} | "
                     f"{ceiling_sa_auprc(long_records, events, cut):.3f} |")
        print(lines[-1], flush=True)
    print_table("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
