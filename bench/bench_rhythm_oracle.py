#!/usr/bin/env python
"""How separable is sinus arrhythmia on the hard benchmark, given the beat times? A ceiling, not a model.

    python bench/bench_rhythm_oracle.py [--records 1500] [--seed 5] [--ranges 10 6-10 20-60 6-60 30-60]

Generates hard-mode records (ecgmamba.synthetic, as bench_quality.py does) in each length range (seconds; 6-10
and 20-60 are bench_quality.py's short- and long-record columns, 10 its training records),
and scores each by one number read from the generator's own R-peak times: the coefficient of variation (standard
deviation over mean) of the RR intervals between consecutive conducted beats (intervals touching a premature
beat left out). Prints that score's AUROC and AUPRC for sinus arrhythmia among sinus-rhythm records (SA is only
drawn on a sinus rhythm; AF, which the networks already solve, would otherwise dominate the spread) and among all
records. A network that reads the signal has to find the beats and measure their spacing itself; this says what
it could reach if it did.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ecgmamba.metrics import compute_auc  # noqa: E402
from ecgmamba.synthetic import MIXED_RATE_WEIGHTS, MIXED_RATES, SA, SINUS_RHYTHMS, generate_record  # noqa: E402


def rr_variation(beats, kinds):
    """Coefficient of variation of the RR intervals between consecutive conducted ('N') beats."""
    beats = np.asarray(beats)
    conducted = np.array([a == "N" and b == "N" for a, b in zip(kinds[:-1], kinds[1:])], dtype=bool)
    rr = np.diff(beats)[conducted]
    return float(np.std(rr) / np.mean(rr)) if len(rr) >= 2 else 0.0


def score(records, seed, low, high):
    scores, is_sa, sinus = [], [], []
    for child in np.random.SeedSequence(seed).spawn(records):
        rng = np.random.default_rng(child)
        fs = int(rng.choice(MIXED_RATES, p=MIXED_RATE_WEIGHTS))
        duration = float(rng.uniform(low, high))
        _, labels, _, _, events = generate_record(rng, fs, duration, hard=True, return_events=True)
        scores.append(rr_variation(events["beats"], events["kinds"]))
        is_sa.append(SA in labels)
        sinus.append(any(rhythm in labels for rhythm in SINUS_RHYTHMS))
    return np.array(scores), np.array(is_sa), np.array(sinus)


def auc(labels, scores):
    auroc, auprc, _, _ = compute_auc(labels[:, None].astype(float), scores[:, None])
    return auroc, auprc


def length_range(text):
    """'6-10' -> (6.0, 10.0); '10' -> (10.0, 10.0); the generator makes records of 6 s to an hour."""
    try:
        low, _, high = text.partition("-")
        low, high = float(low), float(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LOW-HIGH or one length in seconds") from None
    if not 6.0 <= low <= high <= 3600.0:
        raise argparse.ArgumentTypeError(f"{text!r}: lengths must run from 6 s to 3600 s, low first")
    return low, high


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1500, help="records per length range")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--ranges", nargs="+", type=length_range, default=["10", "6-10", "20-60", "6-60", "30-60"],
                        help="record lengths in seconds: LOW-HIGH (uniform) or one length")
    args = parser.parse_args()
    args.ranges = [length_range(r) if isinstance(r, str) else r for r in args.ranges]
    print(f"Sinus arrhythmia from the RR intervals' coefficient of variation, {args.records} hard-mode records per "
          f"length range\n")
    print("| record length | SA prevalence | AUROC / AUPRC, sinus-rhythm records | AUROC / AUPRC, all records |")
    print("|---|---:|---|---|")
    for low, high in args.ranges:
        scores, is_sa, sinus = score(args.records, args.seed, low, high)
        sinus_auc = auc(is_sa[sinus], scores[sinus])
        all_auc = auc(is_sa, scores)
        length = f"{low:g} s" if low == high else f"{low:g}-{high:g} s"
        print(f"| {length} | {is_sa.mean():.3f} | {sinus_auc[0]:.3f} / {sinus_auc[1]:.3f} | "
              f"{all_auc[0]:.3f} / {all_auc[1]:.3f} |")


if __name__ == "__main__":
    main()
