#!/usr/bin/env python
"""Does the network read sinus arrhythmia from the rhythm, or recognise the training patients who have it?

    python bench/bench_sa_twins.py --work /tmp/s18/hard --model "small:time_warp=0.3" --train-seed 4 [--epochs E]
                                   [--fresh 400]

For each sinus record, training record or fresh one, the hard generator writes a twin: the same patient (labels,
rate, morphology, noise draws, sampling rate, length) with one thing changed, the depth of the respiratory RR
modulation moved from the sinus-arrhythmia range into the normal one (or the other way round, for records without
sinus arrhythmia). The generator draws the same random numbers for both, so the twins differ only in their beat
times. A network that reads the rhythm gives the twin of a training SA record a low SA probability; one that has
learnt which training patients carry the label gives it a high one, and does no such thing on fresh patients.
Printed per set: how often the SA record scores above its twin (the paired AUROC), and the median SA probability of
each. Then the network's response to the modulation depth alone: --curve fresh patients per sinus rate, each
generated again at every depth (the respiratory RR modulation's amplitude, a fraction of RR; the generator labels
0.01-0.04 normal and 0.06-0.11 sinus arrhythmia), with the median SA probability per depth and rate, and how
often a patient's record scores higher at 0.06 than at 0.04 (at the label's line), how often any patient's record
at 0.06 scores above any other's at 0.04 (what an AUPRC over patients sees), and how often a patient's record at
an SA depth scores above the same patient's at a normal one. Needs the
weights bench_quality.py saved in --work.
"""

import argparse
import contextlib
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from bench_quality import SINUS_RATES, LeadSetModels, predict, prepare, reading_config, trained_weights  # noqa: E402
from ecgmamba.preprocess import preprocess_recording  # noqa: E402
from ecgmamba.records import TWELVE_LEADS  # noqa: E402
from ecgmamba.scoring import load_scoring  # noqa: E402
from ecgmamba import synthetic  # noqa: E402
from ecgmamba.synthetic import (HARD_PREVALENCE, MIXED_RATE_WEIGHTS, MIXED_RATES, SA, draw_labels,  # noqa: E402
                                generate_record)

SINUS = tuple(code for _, code in SINUS_RATES)


def twin_pair(child, seconds):
    """(fs, labels, signal as generate_dataset wrote it, signal with sinus arrhythmia toggled) for one record's seed.
    The twin is drawn from the stream as it stands after the labels, with the toggled labels given: generate_record
    then draws everything else as it did for the original. None where the record is not a sinus rhythm."""
    rng = np.random.default_rng(child)
    fs = int(rng.choice(MIXED_RATES, p=MIXED_RATE_WEIGHTS))
    state = rng.bit_generator.state
    original, labels = generate_record(rng, fs, seconds, hard=True)[:2]
    if not any(code in labels for code in SINUS):
        return None
    rng.bit_generator.state = state
    draw_labels(rng, HARD_PREVALENCE, True)  # moves the stream past the labels, as generate_record does
    toggled = [code for code in labels if code != SA] if SA in labels else list(labels) + [SA]
    twin = generate_record(rng, fs, seconds, labels=toggled, hard=True)[0]
    return fs, labels, original, twin


@contextlib.contextmanager
def modulation_depth(depth):
    """Every sinus record generated inside has a respiratory RR modulation of exactly `depth` (of RR)."""
    saved = dict(synthetic.RESPIRATORY_MODULATION)
    synthetic.RESPIRATORY_MODULATION.update({key: (depth, depth) for key in saved})
    try:
        yield
    finally:
        synthetic.RESPIRATORY_MODULATION.update(saved)


def depth_curve(network, preprocess, reading, sa, n, seed, depths):
    """{rate label: SA probabilities (patients, depths)}: n patients per sinus rate (10 s, mixed sampling rates, no
    other finding), each generated once per depth from the same seed, so that only the modulation changes."""
    curve = {}
    for k, code in enumerate(SINUS):
        signals = []
        for child in np.random.SeedSequence([seed, k]).spawn(n):
            rate_seed, record_seed = child.spawn(2)  # one stream would tie the sampling rate to the heart rate
            fs = int(np.random.default_rng(rate_seed).choice(MIXED_RATES, p=MIXED_RATE_WEIGHTS))
            for depth in depths:
                with modulation_depth(depth):
                    signal = generate_record(np.random.default_rng(record_seed), fs, 10.0, labels=[code],
                                             hard=True)[0]
                signals.append(preprocess_recording(signal, fs, preprocess))
        curve[code] = predict(network, signals, reading)[:, sa].reshape(n, len(depths))
    return curve


def paired_auroc(high, low):
    """P(high > low) over the pairs the two arrays make (element by element, or broadcast), ties counting half."""
    return float(np.mean((high > low) + 0.5 * (high == low)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True)
    parser.add_argument("--model", default="small:time_warp=0.3")
    parser.add_argument("--train-seed", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=30, help="the --epochs it was trained for")
    parser.add_argument("--train-records", type=int, default=2000, help="how many training records --work holds")
    parser.add_argument("--first", type=int, default=1000, help="twin the sinus records among the first N of them")
    parser.add_argument("--fresh", type=int, default=1000, help="and among N fresh 10 s records (data seed + 5)")
    parser.add_argument("--curve", type=int, default=60, help="patients per sinus rate for the depth response "
                        "(data seed + 6); 0: none")
    args = parser.parse_args()
    weights, data_seed, train_seed = trained_weights(args.work, args.model, args.train_seed, args.epochs)
    torch.manual_seed(train_seed)
    table = load_scoring("2021")
    model, preprocess, config, cache = prepare(args.model, table, args.work, 16, train_seed)
    model.load_state_dict(torch.load(weights, weights_only=True))
    network, _ = LeadSetModels(model.eval(), cache, preprocess, config)(TWELVE_LEADS)
    reading = reading_config(preprocess, "whole")
    sa = table.code_to_index()[SA]

    sets = {"training": np.random.SeedSequence(data_seed).spawn(args.train_records)[:args.first],
            "fresh": np.random.SeedSequence(data_seed + 5).spawn(args.fresh)}
    print(f"{args.model}, training seed {train_seed}, data seed {data_seed}; SA probability, 12 leads, whole reading")
    print("| records | pairs | SA record above its twin (paired AUROC) | median p(SA): SA record | its twin without SA "
          "| record without SA | its twin with SA |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, children in sets.items():
        signals, has_sa = [], []
        for child in children:
            pair = twin_pair(child, 10.0)
            if pair is None:
                continue
            fs, labels, original, twin = pair
            signals += [preprocess_recording(s, fs, preprocess) for s in (original, twin)]
            has_sa.append(SA in labels)
        if not has_sa:
            continue
        p = predict(network, signals, reading)[:, sa]
        original, twin, has_sa = p[0::2], p[1::2], np.array(has_sa)
        high = np.where(has_sa, original, twin)  # the member of each pair with SA
        low = np.where(has_sa, twin, original)
        print(f"| {name} | {len(has_sa)} ({int(has_sa.sum())} with SA) | {paired_auroc(high, low):.3f} | "
              f"{np.median(original[has_sa]):.3f} | {np.median(twin[has_sa]):.3f} | "
              f"{np.median(original[~has_sa]):.3f} | {np.median(twin[~has_sa]):.3f} |")
        for label, chosen in (("  with SA as generated", has_sa), ("  without SA as generated", ~has_sa)):
            print(f"{label}: paired AUROC {paired_auroc(high[chosen], low[chosen]):.3f}")

    if args.curve:
        depths = np.round(np.arange(0.01, 0.1101, 0.01), 2)
        curve = depth_curve(network, preprocess, reading, sa, args.curve, data_seed + 6, depths)
        print(f"\nMedian p(SA) by respiratory modulation depth ({args.curve} patients per rate, each at every depth; "
              "the generator labels 0.01-0.04 normal, 0.06-0.11 SA):")
        print("| depth (of RR) | " + " | ".join(f"{d:.2f}" for d in depths) + " | 0.06 above 0.04, same patient | "
              "0.06 above 0.04, any two patients | SA depths above normal ones, same patient |")
        print("|---|" + "---:|" * (len(depths) + 3))
        normal, arrhythmia = depths <= 0.04 + 1e-9, depths >= 0.06 - 1e-9
        i06, i04 = (int(np.flatnonzero(np.isclose(depths, d))[0]) for d in (0.06, 0.04))
        for name, code in SINUS_RATES:
            p = curve[code]
            at_line = paired_auroc(p[:, i06], p[:, i04])
            across = paired_auroc(p[:, i06][:, None], p[:, i04][None, :])  # every patient against every other
            ranges = paired_auroc(p[:, arrhythmia][:, :, None], p[:, normal][:, None, :])  # every pair of depths
            print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in np.median(p, axis=0)) +
                  f" | {at_line:.3f} | {across:.3f} | {ranges:.3f} |")


if __name__ == "__main__":
    main()
