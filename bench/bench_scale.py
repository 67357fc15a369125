#!/usr/bin/env python
"""Scale rehearsal: the whole train_model.py path on N synthetic records in the public 2021 data's mix.

    python bench/bench_scale.py [--sizes 1000 4000 16000] [--work DIR] [--out bench/scale.md]

For each N, writes N records whose sources, sampling rates and durations follow the 88,253 public recordings
(Ningbo, Chapman-Shaoxing, Georgia and PTB-XL at 500 Hz for 10 s; CPSC and CPSC-Extra at 500 Hz for 6-60 s; PTB
at 1000 Hz for 30-120 s; INCART at 257 Hz for 30 min, at least two of them at every N), then runs
`train_model.py` on them with a tiny model for one epoch on the CPU and reads the stage table it saves. Reported
per stage: seconds, records/s and milliseconds per record; per run: peak memory of the whole process tree
(anonymous, i.e. beyond the memory-mapped cache, and file-backed), and disk (cache, model folder). The scaling
table divides each stage's cost per record at the largest N by that at the smallest (the goal is at most 1.3:
no stage grows faster than the data) and extrapolates the cost to the full 88,253 records.

The tiny model makes training itself cheap, so the table measures the pipeline around the model (reading,
caching, loading, validation, threshold tuning, saving); the model's own cost per record is bench_model.py's.
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from joblib import Parallel, delayed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ecgmamba.synthetic import generate_record, write_record  # noqa: E402

FULL_SIZE = 88253
# (source, record-id prefix, records in the public 2021 training data, Hz, duration in s: fixed or (low, high))
SOURCES = [
    ("CPSC", "A", 6877, 500, "cpsc"),
    ("CPSC-Extra", "Q", 3453, 500, "cpsc"),
    ("INCART", "I", 74, 257, 1800.0),
    ("PTB", "S", 516, 1000, (30.0, 120.0)),
    ("PTB-XL", "HR", 21837, 500, 10.0),
    ("Georgia", "E", 10344, 500, 10.0),
    ("Chapman-Shaoxing", "JS", 10247, 500, 10.0),
    ("Ningbo", "JS", 34905, 500, 10.0),
]
TINY_MODEL = {"d_model": 16, "depth": 1, "d_state": 4, "stem_channels": 8, "num_samples": 512}


def source_counts(n, min_incart=2):
    """Records per source for a sample of n: proportional (largest remainders), with at least min_incart
    30-minute INCART records so the longest records are always in the rehearsal."""
    shares = np.array([s[2] for s in SOURCES], dtype=float) / FULL_SIZE * n
    counts = np.floor(shares).astype(int)
    incart = [s[0] for s in SOURCES].index("INCART")
    counts[incart] = max(counts[incart], min_incart)
    for i in np.argsort(-(shares - np.floor(shares))):
        if counts.sum() >= n:
            break
        counts[i] += 1
    while counts.sum() > n:  # the INCART minimum pushed the total over: take from the largest source
        counts[np.argmax(counts)] -= 1
    return counts


def duration_of(rule, rng):
    if rule == "cpsc":  # CPSC records: 6 to 60 s, most 10-20 s (mean about 16 s)
        return float(min(60.0, 6.0 + rng.exponential(10.0)))
    if isinstance(rule, tuple):
        return float(rng.uniform(*rule))
    return float(rule)


def _write_one(directory, record_id, fs, rule, seed):
    rng = np.random.default_rng(seed)
    signal, labels, age, sex = generate_record(rng, fs, duration_of(rule, rng))
    write_record(directory, record_id, signal, fs, labels, age, sex)
    return signal.shape[1] / fs


def write_public_mix(directory, n, seed=0, jobs=None):
    """n records in the public mix; returns the total seconds of signal."""
    os.makedirs(directory, exist_ok=True)
    tasks, serial = [], {}
    for (name, prefix, _, fs, rule), count in zip(SOURCES, source_counts(n)):
        for _ in range(count):
            serial[prefix] = serial.get(prefix, 0) + 1
            tasks.append((f"{prefix}{serial[prefix]:05d}", fs, rule))
    seeds = np.random.SeedSequence(seed).generate_state(len(tasks))
    seconds = Parallel(n_jobs=jobs or os.cpu_count())(
        delayed(_write_one)(directory, rid, fs, rule, int(s)) for (rid, fs, rule), s in zip(tasks, seeds))
    return float(sum(seconds))


def tree_memory(pid):
    """(anonymous, file-backed) resident bytes of process pid and all its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    anon = file = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        anon += int(line.split()[1]) * 1024
                    elif line.startswith("RssFile:"):
                        file += int(line.split()[1]) * 1024
        except OSError:
            pass
    return anon, file


def folder_bytes(path, skip=()):
    total = 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d not in skip]
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def rehearse(n, work, seed):
    data, model = os.path.join(work, f"data_{n}"), os.path.join(work, f"model_{n}")
    shutil.rmtree(model, ignore_errors=True)
    started = time.perf_counter()
    if not os.path.isdir(data) or len([f for f in os.listdir(data) if f.endswith(".hea")]) != n:
        shutil.rmtree(data, ignore_errors=True)
        signal_seconds = write_public_mix(data, n, seed)
    else:
        signal_seconds = None
    generation = time.perf_counter() - started
    env = dict(os.environ, ECGMAMBA_PRESET="small", ECGMAMBA_EPOCHS="1", ECGMAMBA_MODEL=json.dumps(TINY_MODEL),
               ECGMAMBA_PROGRESS="0", ECGMAMBA_DEVICE="cpu", ECGMAMBA_KEEP_WORK="1", PYTHONPATH=ROOT)
    started = time.perf_counter()
    with open(os.path.join(work, f"train_{n}.log"), "w") as log:
        process = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_model.py"), data, model], cwd=ROOT,
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
        samples = []  # (unix time, anonymous bytes, file-backed bytes) of the whole process tree
        while process.poll() is None:
            samples.append((time.time(), *tree_memory(process.pid)))
            time.sleep(0.2)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"train_model.py failed on {n} records; see {work}/train_{n}.log")
    with open(os.path.join(model, "stages.csv")) as f:
        stages = [{"stage": r["stage"], "seconds": float(r["seconds"]), "start": float(r["start_unix"]),
                   "end": float(r["end_unix"])} for r in csv.DictReader(f)]
    for s in stages:  # the tree's peak while the stage ran (a sample 0.2 s either side counts too)
        inside = [a for t, a, _ in samples if s["start"] - 0.2 <= t <= s["end"] + 0.2]
        s["peak_anon_mib"] = max(inside, default=0) / 2**20
    peak_anon = max((a for _, a, _ in samples), default=0)
    peak_file = max((f for _, _, f in samples), default=0)
    return {"n": n, "generation_s": generation, "signal_hours": None if signal_seconds is None else
            signal_seconds / 3600, "wall_s": wall, "stages": stages, "peak_anon_mib": peak_anon / 2**20,
            "peak_file_mib": peak_file / 2**20, "cache_mib": folder_bytes(os.path.join(model, "cache")) / 2**20,
            "model_mib": folder_bytes(model, skip=("cache", "checkpoints")) / 2**20}


def stage_key(name):
    """Stage names without the epoch number, so runs compare stage by stage."""
    return name.replace("shared epoch 1 ", "epoch ")


def report(runs):
    lines = []
    for run in runs:
        lines += [f"### N = {run['n']:,} records (train_model.py wall {run['wall_s']:.0f} s; peak memory "
                  f"{run['peak_anon_mib']:.0f} MiB anonymous + {run['peak_file_mib']:.0f} MiB file-backed; cache "
                  f"{run['cache_mib']:.0f} MiB; model folder {run['model_mib']:.2f} MiB)", "",
                  "| stage | seconds | records/s | ms per record | peak anonymous MiB |", "|---|---:|---:|---:|---:|"]
        for s in run["stages"]:
            lines.append(f"| {s['stage']} | {s['seconds']:.2f} | {run['n'] / max(s['seconds'], 1e-9):,.0f} | "
                         f"{1000 * s['seconds'] / run['n']:.3f} | {s['peak_anon_mib']:.0f} |")
        lines.append("")
    small, large = runs[0], runs[-1]
    per = {run["n"]: {stage_key(s["stage"]): s["seconds"] / run["n"] for s in run["stages"]} for run in runs}
    lines += [f"### Scaling: ms per record, and the full {FULL_SIZE:,} records by the largest run's rate", "",
              "| stage | " + " | ".join(f"N={r['n']:,}" for r in runs) + f" | ratio {large['n']:,}/{small['n']:,} "
              f"| {FULL_SIZE:,} records (s) |", "|---|" + "---:|" * (len(runs) + 2)]
    total_full = 0.0
    for key in per[small["n"]]:
        costs = [per[r["n"]].get(key, float("nan")) for r in runs]
        full = costs[-1] * FULL_SIZE
        total_full += full
        lines.append(f"| {key} | " + " | ".join(f"{1000 * c:.3f}" for c in costs) +
                     f" | {costs[-1] / costs[0]:.2f} | {full:,.0f} |")
    lines += [f"| total | | | | | {total_full:,.0f} |", "", "### Peak anonymous memory of the process tree per stage (MiB)", "",
              "| stage | " + " | ".join(f"N={r['n']:,}" for r in runs) + " |", "|---|" + "---:|" * len(runs)]
    peaks = {r["n"]: {stage_key(s["stage"]): s["peak_anon_mib"] for s in r["stages"]} for r in runs}
    for key in peaks[small["n"]]:
        lines.append(f"| {key} | " + " | ".join(f"{peaks[r['n']].get(key, float('nan')):.0f}" for r in runs) + " |")
    lines += ["",
              "Peak memory beyond the memory map (anonymous RSS of the process tree): " +
              ", ".join(f"{r['peak_anon_mib']:.0f} MiB at N={r['n']:,}" for r in runs) + "; cache on disk: " +
              ", ".join(f"{r['cache_mib']:.0f} MiB" for r in runs) +
              f" (full set by the same rate: {large['cache_mib'] / large['n'] * FULL_SIZE / 1024:.1f} GiB at the "
              "small preset's 250 Hz, twice that at paper's 500 Hz)."]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--work", default="/tmp/ecgmamba_bench_scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the Markdown here")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    runs = []
    for n in sorted(args.sizes):
        runs.append(rehearse(n, args.work, args.seed))
        print(f"N={n}: data written in {runs[-1]['generation_s']:.0f} s, train_model.py {runs[-1]['wall_s']:.0f} s",
              file=sys.stderr)
    text = report(runs)
    print(text)
    with open(os.path.join(args.work, "scale.json"), "w") as f:
        json.dump(runs, f, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
