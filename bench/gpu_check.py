#!/usr/bin/env python
"""GPU rehearsal in one command: the CUDA paths' parity, their speed, and train_model.py end to end.

    python bench/gpu_check.py [--stage torch|kernels] [--out gpu_check.md] [--records 1000] [--epochs 1]

--stage torch (needs only torch):
  1. the chunked PyTorch scan on CUDA against the CPU kernel (output and gradients, fp32 inputs and bf16 ones);
  2. its speed and peak memory at the paper preset's shape (batch 32, d_inner 768, d_state 16, 730 tokens);
  3. `paper` (batch 32) and `large` (batch 64) training throughput and peak memory in bf16, with activation
     checkpointing off and on, the probe's activation estimate, and inference records/s per lead set;
  4. train_model.py on --records synthetic records (paper preset, --epochs epochs), with its stage table; its
     output goes to train_model_<stage>.log beside --out as it runs.
  On an H200 steps 1-3 took 2 min 45 s with checkpointing off only (2026-12-04): the chunked scan, 92 ms per
  forward and backward at that shape, is 48 of those per `paper` step. Step 4 at 2,000 records did not end
  within 7 minutes, hence 1,000 by default.
--stage kernels: the same, after mamba-ssm and causal-conv1d were installed (scripts/gpu_check.sh builds them
  from carried source distributions), plus mamba-ssm's kernel against the CPU kernel (fp32 and bf16) and the
  chunked scan's speed relative to the kernel. On an H200 it took 87 s after the build (2026-12-04): the
  kernel scan takes 2.97 ms per forward and backward at the paper shape, and paper trains 144.9 windows/s.

Writes Markdown for bench/RESULTS.md (to --out and stdout), naming the card. Without a GPU it says so and exits
with status 2. --device cpu --tiny runs every step at toy sizes on the CPU (the test suite's check that this
script works; its numbers mean nothing).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ecgmamba import selective_scan as scan  # noqa: E402
from ecgmamba.inference import autocast  # noqa: E402
from ecgmamba.model import ECGMamba, backend_report, preset_config  # noqa: E402
from ecgmamba.records import LEAD_SETS, TWELVE_LEADS  # noqa: E402
from ecgmamba.synthetic import generate_dataset  # noqa: E402
from ecgmamba.train import activation_bytes, specialise  # noqa: E402


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats=5, warmup=2):
    """Median seconds of fn() over `repeats` after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def scan_inputs(batch, dim, dstate, length, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(device)

    inputs = dict(u=randn(batch, dim, length), delta=randn(batch, dim, length, scale=0.5),
                  A=-torch.exp(randn(dim, dstate, scale=0.5)), B=randn(batch, dstate, length),
                  C=randn(batch, dstate, length), D=randn(dim), z=randn(batch, dim, length),
                  delta_bias=randn(dim, scale=0.3))
    for name in ("u", "delta", "B", "C", "z"):  # activations in the autocast dtype; A, D, delta_bias stay fp32
        inputs[name] = inputs[name].to(dtype)
    return inputs


def run_scan(fn, inputs):
    leaves = {name: t.detach().clone().requires_grad_() for name, t in inputs.items()}
    out, last = fn(**leaves, delta_softplus=True, return_last_state=True)
    weight = torch.linspace(-1, 1, out.shape[-1], device=out.device)
    (out.float() * weight).sum().backward()
    return [out.float(), last.float()] + [leaves[name].grad.float() for name in inputs]


def relative_error(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def parity(name, fn, device, shape):
    """Rows of (implementation, dtype, worst relative error of output, last state, gradients) against the CPU
    kernel in fp32 on the same (upcast) inputs."""
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        inputs = scan_inputs(*shape, device, dtype)
        reference = run_scan(scan.selective_scan_fn, {k: v.float().cpu() for k, v in inputs.items()})
        got = run_scan(fn, inputs)
        errors = [relative_error(g, r) for g, r in zip(got, reference)]
        rows.append((name, str(dtype).replace("torch.", ""), errors[0], errors[1], max(errors[2:])))
    return rows


def scan_speed(fn, device, shape, dtype=torch.bfloat16):
    inputs = scan_inputs(*shape, device, dtype)
    leaves = {name: t.detach().clone().requires_grad_() for name, t in inputs.items()}

    def forward():
        with torch.no_grad():
            fn(**inputs, delta_softplus=True)

    def forward_backward():
        fn(**leaves, delta_softplus=True).float().sum().backward()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    f = timed(forward, device)
    fb = timed(forward_backward, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return f, fb, peak


def synthetic_step(model, batch, device, precision):
    """A function running one AdamW training step of `model` on a fixed random batch of 12-lead windows (26
    classes, about 10 % positive), in `precision`; its `inputs` attribute is that batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 12, model.config.num_samples, device=device)
    y = (torch.rand(batch, model.config.num_classes, device=device) < 0.1).float()
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def step():
        with autocast(device, precision):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    step.inputs = x
    return step


def model_throughput(preset, batch, device, precision, steps, overrides=None, recompute=False):
    """(training samples/s, peak GiB, the probe's estimate of the activations in GiB, {leads: inference
    records/s}); recompute: activation checkpointing."""
    config = preset_config(preset, num_classes=26, **(overrides or {}))
    model = ECGMamba(config).to(device)
    per_window, per_step = activation_bytes(model, 12, config.num_samples, device, precision)
    estimate = (per_step + batch * per_window) / 2**30
    model.activation_checkpointing = recompute
    step = synthetic_step(model, batch, device, precision)
    x = step.inputs
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    seconds = timed(step, device, repeats=steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    model.eval()
    inference = {}
    for leads in LEAD_SETS if not recompute else ():  # checkpointing changes training only
        special = specialise(model, leads).eval()
        xs = x[:, [TWELVE_LEADS.index(lead) for lead in leads]]

        @torch.no_grad()
        def infer():
            with autocast(device, precision):
                special(xs)

        inference[len(leads)] = batch / timed(infer, device, repeats=steps)
    return batch / seconds, peak, estimate, inference


def end_to_end(records, epochs, preset, device, tiny, work, log_path):
    data, model = os.path.join(work, "data"), os.path.join(work, "model")
    started = time.perf_counter()
    generate_dataset(data, records, seed=0, fs="mixed", duration_s="mixed")
    generation = time.perf_counter() - started
    env = dict(os.environ, ECGMAMBA_PRESET=preset, ECGMAMBA_EPOCHS=str(epochs), ECGMAMBA_PROGRESS="0",
               ECGMAMBA_DEVICE=str(device), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    if tiny:
        env["ECGMAMBA_MODEL"] = json.dumps({"d_model": 16, "depth": 1, "d_state": 4, "stem_channels": 8,
                                            "num_samples": 512})
        env["ECGMAMBA_BATCH_SIZE"] = "8"
    started = time.perf_counter()
    with open(log_path, "w+") as log:  # written as it runs, so a check stopped by a time limit still shows how far
        returncode = subprocess.run([sys.executable, os.path.join(ROOT, "train_model.py"), data, model], env=env,
                                    stdout=log, stderr=subprocess.STDOUT).returncode
        log.seek(0)
        output = log.read()
    wall = time.perf_counter() - started
    if returncode != 0:
        return f"train_model.py FAILED (exit {returncode}):\n\n```\n{output[-4000:]}\n```\n"
    with open(os.path.join(model, "stages.md")) as f:
        stages = f.read()
    with open(os.path.join(model, "model_" + "-".join(TWELVE_LEADS) + ".json")) as f:
        validation = json.load(f)["validation"]
    backends = [line for line in output.splitlines()
                if line.startswith(("Backends", "WARNING", "Precision")) or "activation checkpointing" in line]
    return (f"train_model.py on {records} synthetic records (mixed 257/500/1000 Hz, 6-30 s; written in "
            f"{generation:.0f} s), preset {preset}, {epochs} epoch(s): {wall:.0f} s wall. "
            f"12-lead validation AUROC {validation['auroc']:.3f}.\n\n" + "\n".join(f"    {b}" for b in backends) +
            "\n\n" + stages)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=["torch", "kernels"], default="torch")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tiny", action="store_true", help="toy sizes (for the CPU self-test)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False); nothing was measured.",
              file=sys.stderr)
        sys.exit(2)
    if args.stage == "kernels" and scan.load_mamba_selective_scan() is None:
        print("gpu_check: --stage kernels needs mamba-ssm with its CUDA extension (scripts/gpu_check.sh builds it)",
              file=sys.stderr)
        sys.exit(2)

    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    precision = "bf16" if device.type != "cuda" or torch.cuda.is_bf16_supported() else "fp16"
    scan_shape = (2, 16, 4, 50) if args.tiny else (args.batch, 768, 16, 730)
    parity_shape = (2, 8, 4, 37) if args.tiny else (2, 64, 16, 300)
    lines = [f"## GPU check, stage `{args.stage}`: {card}", "",
             f"`python bench/gpu_check.py --stage {args.stage}`; torch {torch.__version__}, CUDA "
             f"{torch.version.cuda}, {time.strftime('%Y-%m-%d')}. {backend_report(device)[0]}.", ""]

    def emit(text=""):
        lines.append(text)
        print(text, flush=True)

    for line in lines:
        print(line, flush=True)
    implementations = [("chunked PyTorch", scan.selective_scan_chunked)]
    if args.stage == "kernels":
        implementations.insert(0, ("mamba-ssm kernel", scan.load_mamba_selective_scan()))

    emit("### Scan parity with the CPU kernel (fp32 reference, max relative error)")
    emit("")
    emit("| implementation | inputs | output | last state | gradients (worst) |")
    emit("|---|---|---:|---:|---:|")
    for name, fn in implementations:
        for row in parity(name, fn, device, parity_shape):
            emit(f"| {row[0]} | {row[1]} | {row[2]:.1e} | {row[3]:.1e} | {row[4]:.1e} |")
    emit("")

    emit(f"### Scan speed, batch {scan_shape[0]} x d_inner {scan_shape[1]} x d_state {scan_shape[2]} x "
         f"{scan_shape[3]} steps, bf16 activations")
    emit("")
    emit("| implementation | forward ms | forward + backward ms | peak MiB |")
    emit("|---|---:|---:|---:|")
    speeds = {}
    for name, fn in implementations:
        f, fb, peak = scan_speed(fn, device, scan_shape)
        speeds[name] = fb
        emit(f"| {name} | {1000 * f:.2f} | {1000 * fb:.2f} | {peak:.0f} |")
    if len(speeds) == 2:
        emit("")
        emit(f"Chunked PyTorch / kernel, forward + backward: {speeds['chunked PyTorch'] / speeds['mamba-ssm kernel']:.1f}x")
    emit("")

    emit(f"### `paper` and `large` presets, {precision}: training with and without activation checkpointing")
    emit("")
    emit("Activations: the probe's count of what a step keeps for backward (train.activation_bytes, which "
         "decides `activation_checkpointing: auto`), against the measured peak without checkpointing.")
    emit("")
    emit("| preset | batch | checkpointing | training samples/s | peak GiB | activations (probe) GiB | "
         + " | ".join(f"inference {len(leads)} leads rec/s" for leads in LEAD_SETS) + " |")
    emit("|---|---:|---|---:|---:|---:|" + "---:|" * len(LEAD_SETS))
    for preset in ("paper", "large"):  # large: paper's width and depth, whole records; same samples per step
        batch = (4 if args.tiny else args.batch) * (2 if preset == "large" else 1)
        overrides = {"depth": 2, "d_model": 32, "num_samples": 1024 // (2 if preset == "large" else 1)} \
            if args.tiny else None
        for recompute in (False, True):
            samples, peak, estimate, inference = model_throughput(preset, batch, device, precision,
                                                                  steps=2 if args.tiny else 5, overrides=overrides,
                                                                  recompute=recompute)
            emit(f"| `{preset}` | {batch} | {'on' if recompute else 'off'} | {samples:.1f} | {peak:.2f} | "
                 f"{estimate:.3g} | " + " | ".join(f"{inference[len(leads)]:.1f}" if inference else "" for leads in LEAD_SETS) + " |")
    emit("")

    emit("### train_model.py end to end")
    emit("")
    log_path = os.path.join(os.path.dirname(os.path.abspath(args.out)) if args.out else ".",
                            f"train_model_{args.stage}.log")
    emit(f"(train_model.py's output: {log_path})")
    emit("")
    with tempfile.TemporaryDirectory() as work:
        emit(end_to_end(40 if args.tiny else args.records, args.epochs, "small" if args.tiny else "paper", device,
                        args.tiny, work, log_path))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
