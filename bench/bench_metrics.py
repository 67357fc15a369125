"""Time the Challenge scores on a full-size training set: 36,266 records x 26 classes of random data.

Run single-threaded so the numbers mean one core:
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 python bench/bench_metrics.py [--bootstrap N]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ecgmamba import metrics  # noqa: E402
from ecgmamba.scoring import load_scoring  # noqa: E402


def best_time(function, repeats):
    """Best of `repeats` wall-clock runs: the least disturbed by other work on the machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=36266)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=0, help="also time bootstrap_ci with N resamples")
    args = parser.parse_args()

    table = load_scoring("2021")
    rng = np.random.default_rng(0)
    shape = (args.records, table.num_classes)
    labels = rng.random(shape) < 0.07
    scalar_outputs = rng.random(shape)
    binary_outputs = scalar_outputs > 0.5
    weights, sinus_rhythm_index = table.weights, table.sinus_rhythm_index

    rows = [
        ("AUROC + AUPRC", lambda: metrics.compute_auc(labels, scalar_outputs)),
        ("Accuracy", lambda: metrics.compute_accuracy(labels, binary_outputs)),
        ("F-measure", lambda: metrics.compute_f_measure(labels, binary_outputs)),
        ("Challenge metric",
         lambda: metrics.compute_challenge_metric(weights, labels, binary_outputs, sinus_rhythm_index)),
    ]
    organizers_order = ("Challenge metric, organizers' summation order",
                        lambda: metrics.compute_challenge_metric(weights, labels, binary_outputs, sinus_rhythm_index,
                                                                 organizers_order=True))
    print(f"{shape[0]:,} records x {shape[1]} classes, best of {args.repeats}")
    print(f"{'metric':<48} {'seconds':>9}")
    total = 0.0
    for name, function in rows:
        seconds = best_time(function, args.repeats)
        total += seconds
        print(f"{name:<48} {seconds:>9.3f}")
    print(f"{'total':<48} {total:>9.3f}")
    name, function = organizers_order
    print(f"{name:<48} {best_time(function, args.repeats):>9.3f}")

    if args.bootstrap:
        seconds = best_time(lambda: metrics.bootstrap_ci(labels, binary_outputs, scalar_outputs, weights,
                                                         sinus_rhythm_index, n=args.bootstrap), 1)
        print(f"{f'bootstrap_ci, n={args.bootstrap} resamples':<48} {seconds:>9.3f}")


if __name__ == "__main__":
    main()
