#!/usr/bin/env python
"""Time and peak memory of run_model on one long record, per reading: the memory bound of issue #11.

    python bench/bench_long_record.py [--minutes 30] [--fs 500] [--preset small]

Each reading runs in a fresh process (so its peak resident memory is its own): the `small` (or `paper`) network
with random weights, a 12-lead record of --minutes at --fs Hz, through team_code's path (inference.run_model:
preprocessing, reading, aggregation). Printed: the reading, the passes' shapes, seconds and peak RSS above the
process's resident memory before the call. `windows` is the earlier reading (at most 32 windows of 8.2 s), `whole`
the default (the whole record in chunks of at most 60 s, at most 32 of them).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

READINGS = {"windows (before)": {"inference": "windows"}, "whole, 60 s chunks (default)": {"inference": "whole"}}


def child(preset, reading, minutes, fs):
    import numpy as np
    import torch

    from ecgmamba.inference import LoadedModel, run_model
    from ecgmamba.model import ECGMamba, PRESET_SAMPLING_RATES, preset_config
    from ecgmamba.preprocess import PreprocessConfig
    from ecgmamba.records import TWELVE_LEADS

    torch.manual_seed(0)
    config = preset_config(preset, num_classes=26)
    preprocess = PreprocessConfig(target_fs=PRESET_SAMPLING_RATES[preset], window_samples=config.num_samples,
                                  **READINGS[reading])
    model = LoadedModel(ECGMamba(config).eval(), TWELVE_LEADS, [str(i) for i in range(26)], [0.5] * 26, preprocess,
                        torch.device("cpu"))
    def header(n):
        return "\n".join([f"LONG 12 {fs} {n}"] + [f"LONG.mat 16 1000/mV 16 0 0 0 0 {lead}" for lead in TWELVE_LEADS]
                         + ["#Dx: 426783006"])

    n = int(minutes * 60 * fs)
    recording = (np.random.default_rng(0).standard_normal((12, n)) * 200).astype(np.int16)
    shapes = []
    model.network.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    run_model(model, header(10 * fs), recording[:, :10 * fs])  # warm-up on 10 s
    shapes.clear()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    run_model(model, header(n), recording)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    passes = sorted(set(shapes))
    print(json.dumps({"seconds": seconds, "peak_above_mib": peak - before, "peak_mib": peak,
                      "passes": len(shapes), "shapes": [list(s) for s in passes],
                      "samples_read": int(sum(s[0] * s[2] for s in shapes))}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--fs", type=int, default=500)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.preset, args.child, args.minutes, args.fs)
    print(f"{args.minutes:g}-minute 12-lead record at {args.fs} Hz, preset {args.preset}, CPU, "
          f"{os.cpu_count()} cores\n")
    print("| reading | forward passes (batch x leads x samples) | seconds of signal read | seconds | "
          "peak RSS (MiB) | peak RSS above the process before the call (MiB) |")
    print("|---|---|---:|---:|---:|---:|")
    from ecgmamba.model import PRESET_SAMPLING_RATES

    rate = PRESET_SAMPLING_RATES[args.preset]
    for reading in READINGS:
        result = subprocess.run([sys.executable, __file__, "--child", reading, "--minutes", str(args.minutes),
                                 "--fs", str(args.fs), "--preset", args.preset], capture_output=True, text=True,
                                check=True)
        r = json.loads(result.stdout.strip().splitlines()[-1])
        shapes = ", ".join("x".join(map(str, s)) for s in r["shapes"])
        print(f"| {reading} | {r['passes']} passes: {shapes} | {r['samples_read'] / rate:.0f} | {r['seconds']:.2f} | "
              f"{r['peak_mib']:.0f} | {r['peak_above_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
