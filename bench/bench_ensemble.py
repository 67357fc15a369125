#!/usr/bin/env python
"""What averaging training runs buys: networks that bench_quality.py trained, scored alone and with their
probabilities averaged, on the same test records.

    python bench/bench_ensemble.py --work DIR --members SPEC@SEED SPEC@SEED [...] [--epochs 30] [--leads 12 2]
                                   [--out FILE]

Each member is a model spec and the --train-seed bench_quality.py trained it with, e.g. `small:time_warp=0.3@4`;
its weights are read from --work (SPEC.seedN.pt; SPEC.eE.seedN.pt for --epochs E). Every member is read as
bench_quality.py reads it (sliced to each lead set, BatchNorm statistics re-estimated, the whole record in one
pass), so its own row repeats bench_quality.py's figures. Then every pair of members and all of them together are
scored with the mean of their probabilities. The spread of `small` between runs is the one thing left in issue
#11's goals; averaging runs is the plain way to narrow it, at one training per member.
"""

import argparse
import itertools
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_quality import (LeadSetModels, lead_set_signals, metric_row, predict, prepare, print_table,  # noqa: E402
                           read_test_set, reading_config, short_test_dir, trained_weights)

from ecgmamba.records import LEAD_SETS  # noqa: E402
from ecgmamba.scoring import encode_labels, load_scoring  # noqa: E402

COLUMNS = ("AUPRC", "rhythm AUPRC", "PAC AUPRC", "SA AUPRC", "rhythm AUPRC <=10 s", "rhythm AUPRC >20 s")


def parse_member(text):
    """(spec, training seed) of SPEC@SEED."""
    spec, at, seed = text.rpartition("@")
    if not at or not seed.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: a member is SPEC@SEED, e.g. small:time_warp=0.3@4")
    return spec, int(seed)


def ensemble_rows(probabilities, score):
    """[(member indices, row)] for each member alone, every pair, and all of them (when more than two), where
    `probabilities` is one (records, classes) array per member and score(array) gives a row of metrics."""
    groups = [(i,) for i in range(len(probabilities))] + list(itertools.combinations(range(len(probabilities)), 2))
    if len(probabilities) > 2:
        groups.append(tuple(range(len(probabilities))))
    return [(group, score(np.mean([probabilities[i] for i in group], axis=0))) for group in groups]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="a bench_quality.py --work folder")
    parser.add_argument("--members", nargs="+", type=parse_member, required=True,
                        help="SPEC@SEED of each trained network, e.g. small:time_warp=0.3@4")
    parser.add_argument("--leads", nargs="+", type=int, default=[12, 2], choices=sorted({len(s) for s in LEAD_SETS}),
                        help="lead counts to score")
    parser.add_argument("--short-records", type=int, default=300,
                        help="the short-record set bench_quality.py's short-record columns read (test_short_N)")
    parser.add_argument("--epochs", type=int, default=30, help="the members' bench_quality.py --epochs")
    parser.add_argument("--out", help="also write the Markdown here")
    args = parser.parse_args()
    found = [trained_weights(args.work, spec, seed, args.epochs) for spec, seed in args.members]
    weights, data_seed = [path for path, _, _ in found], found[0][1]
    if not os.path.isdir(os.path.join(args.work, f"test_short_{args.short_records}")):
        sys.exit(f"{args.work}: no test_short_{args.short_records} folder; bench_quality.py writes it")

    table = load_scoring("2021")
    models, preprocessing = [], set()
    for (spec, seed), path in zip(args.members, weights):
        model, preprocess, config, cache = prepare(spec, table, args.work, 16, seed)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        models.append(LeadSetModels(model, cache, preprocess, config))
        preprocessing.add(preprocess)
    if len(preprocessing) > 1:  # each would read the test records differently
        sys.exit("the members preprocess their input differently (sampling rate, window or scaling); "
                 "average members of one preprocessing")
    test_records = read_test_set(os.path.join(args.work, "test"), preprocess)
    short_records = read_test_set(short_test_dir(args.work, args.short_records, data_seed), preprocess)
    records = test_records + short_records
    main_set = np.arange(len(records)) < len(test_records)
    labels = encode_labels([r["labels"] for r in records], table)
    durations = np.array([r["seconds"] for r in records])
    whole = reading_config(preprocess, "whole")

    names = [f"{spec}@{seed}" for spec, seed in args.members]
    lines = [f"{len(test_records)} test records and {len(short_records)} short ones; members: "
             + "; ".join(f"{k + 1} = `{name}`" for k, name in enumerate(names)), "",
             "| members | leads | " + " | ".join(COLUMNS) + " |", "|---|---:|" + "---:|" * len(COLUMNS)]
    for count in args.leads:
        leads = next(s for s in LEAD_SETS if len(s) == count)
        probabilities, signals = [], {}  # signals by whether the network is sliced: built once per lead set
        for lead_set_models in models:
            network, sliced = lead_set_models(leads)
            if sliced not in signals:
                signals[sliced] = lead_set_signals(records, leads, sliced, preprocess)
            probabilities.append(predict(network, signals[sliced], whole))
        for group, row in ensemble_rows(probabilities,
                                        lambda p: metric_row(labels, p, durations, main_set, table)):
            label = " + ".join(str(i + 1) for i in group)
            lines.append(f"| {label} | {count} | " + " | ".join(f"{row[c]:.3f}" for c in COLUMNS) + " |")
            print(lines[-1], flush=True)
    print_table("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
