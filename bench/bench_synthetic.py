"""Throughput of the synthetic record generator on one CPU core.

Usage: python bench/bench_synthetic.py [--num-records N]

Prints records per second for signal generation alone and for generation plus writing .hea/.mat files, at a fixed
500 Hz / 10 s and with mixed rates (257/500/1000 Hz) and durations (6-30 s). The target is >= 200 records/s for
500 Hz, 10 s records written to disk.
"""

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core, before numpy loads
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ecgmamba.synthetic import MIXED_RATES, generate_dataset, generate_record  # noqa: E402


def time_generation(num_records, fs, duration_s):
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    samples = 0
    for _ in range(num_records):
        record_fs = int(rng.choice(MIXED_RATES)) if fs == "mixed" else fs
        record_duration = float(rng.integers(6, 31)) if duration_s == "mixed" else duration_s
        signal, _, _, _ = generate_record(rng, record_fs, record_duration)
        samples += signal.shape[1]
    return time.perf_counter() - start, samples


def time_dataset(num_records, fs, duration_s):
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        generate_dataset(directory, num_records, seed=0, fs=fs, duration_s=duration_s)
        elapsed = time.perf_counter() - start
        size = sum(f.stat().st_size for f in Path(directory).iterdir())
    return elapsed, size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-records", type=int, default=500)
    args = parser.parse_args()
    n = args.num_records
    print(f"{'setting':<28} {'generate rec/s':>15} {'Msamples/s':>11} {'generate+write rec/s':>21} {'MB/s':>7}")
    for fs, duration_s in ((500, 10.0), (257, 10.0), (1000, 10.0), ("mixed", 10.0), ("mixed", "mixed")):
        gen_seconds, samples = time_generation(n, fs, duration_s)
        write_seconds, size = time_dataset(n, fs, duration_s)
        label = f"fs={fs}, duration={duration_s}"
        print(f"{label:<28} {n / gen_seconds:>15.0f} {12 * samples / gen_seconds / 1e6:>11.1f} "
              f"{n / write_seconds:>21.0f} {size / write_seconds / 1e6:>7.1f}")


if __name__ == "__main__":
    main()
