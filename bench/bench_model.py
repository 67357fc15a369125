#!/usr/bin/env python
"""Model benchmark: parameters, FLOPs per record, and training / inference records/s per preset.

    python bench/bench_model.py [--presets small paper] [--batch 32] [--repeats 3] [--device cpu|cuda]

Training throughput is one AdamW step (forward, backward, update) on random input at the preset's window; inference
is a no-grad forward. On CUDA both run under bf16 autocast, as in training. Prints a Markdown table.
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ecgmamba.model import ECGMamba, count_flops, count_parameters, preset_config  # noqa: E402
from ecgmamba.selective_scan import scan_backend  # noqa: E402


def best_time(fn, repeats, device):
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_preset(name, batch, repeats, device):
    config = preset_config(name, num_classes=26)
    model = ECGMamba(config).to(device)
    x = torch.randn(batch, config.num_leads, config.num_samples, device=device)
    y = (torch.rand(batch, config.num_classes, device=device) < 0.1).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    bf16 = device.type == "cuda"

    def train_step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def infer():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            model(x)

    model.train()
    train_step()  # warm-up: kernel compilation, allocator
    train = best_time(train_step, repeats, device)
    model.eval()
    infer()
    inference = best_time(infer, repeats, device)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
    return {
        "preset": name, "params": count_parameters(model), "gflops": count_flops(config) / 1e9,
        "tokens": model.num_tokens, "train": batch / train, "infer": batch / inference, "peak_gib": peak,
        "backend": scan_backend(x, torch.zeros(1, 1, device=device), x, x),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["small", "paper"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}\n")
    print("| preset | parameters | tokens | GFLOPs / record (fwd) | scan backend | train records/s | "
          "inference records/s | peak GPU GiB |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for name in args.presets:
        r = bench_preset(name, args.batch, args.repeats, device)
        print(f"| {r['preset']} | {r['params'] / 1e6:.2f} M | {r['tokens']} | {r['gflops']:.2f} | {r['backend']} | "
              f"{r['train']:.1f} | {r['infer']:.1f} | {r['peak_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
