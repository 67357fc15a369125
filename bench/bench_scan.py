"""Benchmark the selective scan: the plain PyTorch loop against the fused CPU kernel and the chunked PyTorch scan
(and, on CUDA, the chunked scan against mamba-ssm).

    .venv/bin/python bench/bench_scan.py            # b=8, d_inner=256, dstate=16, l in 250 500 1000 2500 5000
    .venv/bin/python bench/bench_scan.py --quick    # l in 250 1000, two repeats

Times are the minimum over at least --repeats runs, repeated further until --min-seconds have passed, because other
processes share the CPU and the minimum is the least disturbed run; expect noise all the same on a busy machine.
"CPU ms" is the process CPU time (all threads) of forward+backward, which contention disturbs less than wall time.
The inputs are those of a Mamba block: float32, delta_softplus, D, z and delta_bias, variable B and C.

Peak memory: on the CPU each (method, length) runs once more in a fresh subprocess, which reads its peak resident set
size (VmHWM in /proc/self/status) before and after one forward+backward; the column is the growth, i.e. the memory the
scan needs beyond its inputs and the already loaded code. (getrusage's ru_maxrss would not do: Linux carries the
parent's peak over into the child.) On CUDA it is torch.cuda.max_memory_allocated beyond the inputs.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ecgmamba.selective_scan import (scan_backend, selective_scan_chunked, selective_scan_fn,  # noqa: E402
                                     selective_scan_ref)

METHODS = {  # name: (function, device, backend it must dispatch to or None)
    "loop": (selective_scan_ref, "cpu", None),
    "fused_cpu": (selective_scan_fn, "cpu", "cpu_fused"),
    "chunked": (selective_scan_chunked, "cpu", None),
    "loop_cuda": (selective_scan_ref, "cuda", None),
    "chunked_cuda": (selective_scan_chunked, "cuda", None),
    "mamba_cuda": (selective_scan_fn, "cuda", "mamba_ssm"),
}


def make_inputs(batch, dim, dstate, length, device, seed=0):
    """Inputs shaped and scaled like a freshly initialised Mamba block's, all requiring grad."""
    g = torch.Generator().manual_seed(seed)
    dt_init = torch.exp(torch.rand(dim, generator=g) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3)))
                        + torch.log(torch.tensor(1e-3)))
    inputs = dict(
        u=torch.randn(batch, dim, length, generator=g),
        delta=0.1 * torch.randn(batch, dim, length, generator=g),
        A=-torch.arange(1, dstate + 1, dtype=torch.float32).repeat(dim, 1),
        B=torch.randn(batch, dstate, length, generator=g),
        C=torch.randn(batch, dstate, length, generator=g),
        D=torch.ones(dim),
        z=torch.randn(batch, dim, length, generator=g),
        delta_bias=dt_init + torch.log(-torch.expm1(-dt_init)),  # softplus(delta_bias) = dt_init
    )
    return {name: t.to(device).requires_grad_() for name, t in inputs.items()}


def run_once(fn, inputs, grad_out, device):
    """Seconds for the forward, for forward+backward, and the CPU seconds (all threads) of forward+backward."""
    for t in inputs.values():
        t.grad = None
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start, cpu_start = time.perf_counter(), time.process_time()
    out = fn(**inputs, delta_softplus=True)
    sync()
    forward = time.perf_counter() - start
    out.backward(grad_out)
    sync()
    return forward, time.perf_counter() - start, time.process_time() - cpu_start


def available(method):
    fn, device, backend = METHODS[method]
    if device == "cuda" and not torch.cuda.is_available():
        return False
    if backend is not None:
        probe = make_inputs(1, 2, 2, 3, device)
        return scan_backend(probe["u"], probe["A"], probe["B"], probe["C"]) == backend
    return True


def peak_memory_mb(method, args, length):
    """Peak extra memory of one forward+backward: CUDA allocator peak, or ru_maxrss growth in a fresh process."""
    fn, device, _ = METHODS[method]
    if device == "cuda":
        inputs = make_inputs(args.batch, args.dim, args.dstate, length, device)
        grad_out = torch.randn_like(inputs["u"])
        run_once(fn, make_inputs(1, 2, 2, 3, device), torch.randn(1, 2, 3, device=device), device)  # warm up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run_once(fn, inputs, grad_out, device)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    command = [sys.executable, __file__, "--child", method, str(length), "--batch", str(args.batch),
               "--dim", str(args.dim), "--dstate", str(args.dstate), "--threads", str(torch.get_num_threads())]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if result.returncode != 0:
        raise RuntimeError(f"memory run of {method} at length {length} failed:\n{result.stderr}")
    return float(result.stdout.strip().splitlines()[-1])


def peak_rss_kib():
    """This process's peak resident set size so far (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/status has no VmHWM line")


def child(args):
    """Runs in a fresh process: prints the growth of the peak RSS (MiB) caused by one forward+backward."""
    method, length = args.child[0], int(args.child[1])
    fn, device, _ = METHODS[method]
    inputs = make_inputs(args.batch, args.dim, args.dstate, length, device)
    grad_out = torch.randn_like(inputs["u"])
    run_once(fn, make_inputs(1, 2, 2, 3, device), torch.randn(1, 2, 3), device)  # load kernels, warm torch
    before = peak_rss_kib()
    run_once(fn, inputs, grad_out, device)
    after = peak_rss_kib()
    print((after - before) / 1024)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="lengths 250 and 1000, two repeats, one second")
    parser.add_argument("--lengths", type=int, nargs="+", help="default 250 500 1000 2500 5000")
    parser.add_argument("--repeats", type=int, default=5, help="at least this many timed runs per configuration")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="and keep repeating for this long")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=256, help="d_inner")
    parser.add_argument("--dstate", type=int, default=16)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for both methods (default: torch's own)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child(args)
    if args.quick:
        args.repeats, args.min_seconds = 2, 1.0
    if args.lengths is None:
        args.lengths = [250, 1000] if args.quick else [250, 500, 1000, 2500, 5000]

    methods = [m for m in args.methods if available(m)]
    print(f"selective scan, b={args.batch} d_inner={args.dim} dstate={args.dstate} float32; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
          + f"; min of >= {args.repeats} runs and >= {args.min_seconds:g} s; methods: {', '.join(methods)}")
    print(f"{'method':<11} {'length':>6} {'fwd ms':>9} {'fwd+bwd ms':>11} {'CPU ms':>9} {'peak MiB':>9} {'speed-up':>9}")
    for length in args.lengths:
        loop_time = {}
        for method in methods:
            fn, device, _ = METHODS[method]
            inputs = make_inputs(args.batch, args.dim, args.dstate, length, device)
            grad_out = torch.randn_like(inputs["u"])
            run_once(fn, inputs, grad_out, device)  # warm up (compiles or loads the numba kernels)
            runs, start = [], time.perf_counter()
            while len(runs) < args.repeats or time.perf_counter() - start < args.min_seconds:
                runs.append(run_once(fn, inputs, grad_out, device))
            forward = min(r[0] for r in runs) * 1e3
            total = min(r[1] for r in runs) * 1e3
            cpu = min(r[2] for r in runs) * 1e3
            del inputs, grad_out
            memory = "-" if args.no_memory else f"{peak_memory_mb(method, args, length):.0f}"
            if method.startswith("loop"):
                loop_time[device] = total
            speedup = f"{loop_time[device] / total:.1f}x" if device in loop_time else "-"
            print(f"{method:<11} {length:>6} {forward:>9.1f} {total:>11.1f} {cpu:>9.0f} {memory:>9} {speedup:>9}",
                  flush=True)


if __name__ == "__main__":
    main()
