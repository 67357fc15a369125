#!/usr/bin/env python
"""Training-data benchmark: cache-building records/s and one epoch's time from the cache.

    python bench/bench_training.py [--records 400] [--workers 2] [--preset small] [--fs mixed]

Generates synthetic Challenge records (mixed 257/500/1000 Hz by default), builds the preprocessing cache with
`workers` processes, rebuilds nothing on a second call (cache hit), then times one training epoch over the cached
windows (the whole training loop: data loading, forward, backward, AdamW) and its DataLoader alone.
"""

import argparse
import os
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ecgmamba.cache import build_cache  # noqa: E402
from ecgmamba.model import ECGMamba, PRESET_SAMPLING_RATES, preset_config  # noqa: E402
from ecgmamba.preprocess import PreprocessConfig  # noqa: E402
from ecgmamba.records import TWELVE_LEADS  # noqa: E402
from ecgmamba.synthetic import generate_dataset  # noqa: E402
from ecgmamba.train import WindowDataset  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--preset", default="small")
    parser.add_argument("--fs", default="mixed")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    config = preset_config(args.preset, num_classes=26)
    preprocess = PreprocessConfig(target_fs=PRESET_SAMPLING_RATES[args.preset], window_samples=config.num_samples)
    with tempfile.TemporaryDirectory() as work:
        data = os.path.join(work, "data")
        generate_dataset(data, args.records, seed=0, fs=args.fs if args.fs == "mixed" else int(args.fs))
        start = time.perf_counter()
        cache = build_cache(data, os.path.join(work, "cache"), preprocess, workers=args.workers, progress=False)
        build = time.perf_counter() - start
        start = time.perf_counter()
        build_cache(data, os.path.join(work, "cache"), preprocess, workers=args.workers, progress=False)
        reuse = time.perf_counter() - start

        dataset = WindowDataset(cache, range(len(cache)), config.num_samples, TWELVE_LEADS)
        loader = DataLoader(dataset, batch_size=args.batch, shuffle=True)
        start = time.perf_counter()
        for _ in loader:
            pass
        loading = time.perf_counter() - start

        model = ECGMamba(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        start = time.perf_counter()
        for x, y, valid in loader:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x.float(), valid), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epoch = time.perf_counter() - start

    print(f"{args.records} synthetic records ({args.fs} Hz), preset {args.preset}, {args.workers} cache workers, "
          f"torch threads {torch.get_num_threads()}\n")
    print("| measure | value |")
    print("| --- | ---: |")
    print(f"| cache build | {build:.1f} s ({args.records / build:.0f} records/s) |")
    print(f"| cache reuse (unchanged data) | {reuse:.2f} s |")
    print(f"| DataLoader pass over the cache | {loading:.2f} s ({len(cache) / loading:.0f} windows/s) |")
    print(f"| training epoch (batch {args.batch}) | {epoch:.1f} s ({len(cache) / epoch:.1f} records/s) |")


if __name__ == "__main__":
    main()
