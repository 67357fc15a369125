#!/usr/bin/env python
"""Where a training step's time goes: a few steps of a preset under torch.profiler, kernels grouped by what they do.

    python bench/profile_step.py [--preset paper] [--batch 32] [--steps 3] [--device cuda] [--tiny] [--out FILE]

Prints, as Markdown, the step's windows/s (timed without the profiler), its peak GPU memory, the backends in use,
the time per step of each group (selective scan forward and backward, causal conv, matrix multiplies, other
convolutions, normalisation, optimizer, everything else) and the heaviest kernels. On CUDA the times are the GPU
kernels' own; on the CPU (--device cpu --tiny, the test suite's check that this script works) the operators' self
CPU time. Why: on an H200 `paper` trained 145 windows/s with mamba-ssm's kernels, and the scan kernel accounted,
by arithmetic, for about 65 % of the step; this says what the rest is.
"""

import argparse
import os
import re
import sys
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

sys.path.insert(0, os.path.join(ROOT, "bench"))

from ecgmamba.inference import resolve_precision  # noqa: E402
from ecgmamba.model import ECGMamba, backend_report, preset_config  # noqa: E402
from gpu_check import synthetic_step  # noqa: E402

# First match wins; names are CUDA kernel names on a GPU and operator or autograd-function names on the CPU.
GROUPS = [
    ("selective scan, forward", r"selective_scan_fwd|_ChunkedScan(?!Backward)|_CPUScan(?!Backward)|scan_forward"),
    ("selective scan, backward", r"selective_scan_bwd|ChunkedScanBackward|CPUScanBackward|scan_backward"),
    ("causal conv (causal-conv1d)", r"causal_conv1d"),
    ("matrix multiplies", r"gemm|cutlass|xmma|nvjet|cublas|sm\d+_|aten::(?:mm|addmm|bmm|matmul|linear)\b"),
    ("other convolutions (stem, PyTorch conv1d)", r"conv|cudnn|winograd|implicit_|aten::(?:convolution|_convolution)"),
    ("normalisation", r"norm"),
    ("optimizer", r"multi_tensor|adam|foreach"),
    ("copies and flips (layout)", r"direct_copy|copy_kernel|flip|aten::(?:copy_|flip|clone|contiguous)\b"),
]
OTHER = "everything else (elementwise, copies, reductions)"


def group_of(name):
    for group, pattern in GROUPS:
        if re.search(pattern, name, re.IGNORECASE):
            return group
    return OTHER


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kernel_times(prof, device):
    """{name: total microseconds} of the GPU kernels (CUDA) or the operators' self CPU time (CPU)."""
    times = defaultdict(float)
    if device.type == "cuda":
        for event in prof.events():
            if event.device_type == torch.autograd.DeviceType.CUDA:
                times[event.name] += event.time_range.elapsed_us()
    else:
        for event in prof.key_averages():
            if event.self_cpu_time_total > 0:
                times[event.key] += event.self_cpu_time_total
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after 2 warm-up steps)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (for the CPU self-test)")
    parser.add_argument("--top", type=int, default=12, help="heaviest kernels listed")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("profile_step: no CUDA GPU is visible; nothing was measured.", file=sys.stderr)
        sys.exit(2)
    precision = resolve_precision(args.precision, device.type)
    overrides = {"depth": 2, "d_model": 32, "num_samples": 1024} if args.tiny else {}
    config = preset_config(args.preset, num_classes=26, **overrides)
    model = ECGMamba(config).to(device).train()
    step = synthetic_step(model, args.batch, device, precision)
    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - started) / args.steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        synchronize(device)
    times = kernel_times(prof, device)
    per_step = {name: us / 1000 / args.steps for name, us in times.items()}
    total = sum(per_step.values())
    groups = defaultdict(float)
    for name, ms in per_step.items():
        groups[group_of(name)] += ms

    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    what = "GPU kernel time" if device.type == "cuda" else "operators' self CPU time"
    lines = [f"### Training step profile: `{args.preset}`, batch {args.batch}, {precision}, {card}", "",
             f"`python bench/profile_step.py --preset {args.preset} --batch {args.batch}`; torch {torch.__version__}, "
             f"{time.strftime('%Y-%m-%d')}. {backend_report(device)[0]}.", "",
             f"{args.batch / seconds:.1f} windows/s ({1000 * seconds:.1f} ms per step, timed without the profiler), " +
             (f"peak {peak:.2f} GiB. " if device.type == "cuda" else "") +
             f"{what[0].upper() + what[1:]} per step under the profiler: {total:.1f} ms.", "",
             f"| group | ms per step | share of the {what} |", "|---|---:|---:|"]
    for group in [g for g, _ in GROUPS] + [OTHER]:
        if groups.get(group):
            lines.append(f"| {group} | {groups[group]:.2f} | {100 * groups[group] / total:.1f} % |")
    lines += ["", f"| heaviest kernels | group | ms per step |", "|---|---|---:|"]
    for name, ms in sorted(per_step.items(), key=lambda item: -item[1])[:args.top]:
        short = name if len(name) <= 150 else name[:60] + " ... " + name[-85:]  # the functor is near the end
        lines.append(f"| `{short.replace('|', '/')}` | {group_of(name)} | {ms:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
