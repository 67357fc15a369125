"""The selective scan: both implementations against the recurrence written out, gradients, dtypes, dispatch."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ecgmamba import selective_scan as scan
from ecgmamba.selective_scan import scan_backend, selective_scan_fn, selective_scan_ref

ROOT = Path(__file__).resolve().parents[1]


def step_by_step(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The recurrence one time step and one state at a time, in Python floats (float64): out and last state."""
    batch, dim, length = u.shape
    dstate = A.shape[1]

    def column(M, b, d, t):  # the dstate values of B or C that channel d sees at step t
        if M.dim() == 2:
            return M[d].tolist()
        if M.dim() == 3:
            return M[b, :, t].tolist()
        return M[b, d // (dim // M.shape[1]), :, t].tolist()

    out = torch.zeros(batch, dim, length, dtype=torch.float64)
    last = torch.zeros(batch, dim, dstate, dtype=torch.float64)
    for b in range(batch):
        for d in range(dim):
            h = [0.0] * dstate
            for t in range(length):
                dt = float(delta[b, d, t]) + (float(delta_bias[d]) if delta_bias is not None else 0.0)
                if delta_softplus and dt <= 20.0:
                    dt = math.log1p(math.exp(dt))
                x = float(u[b, d, t])
                B_t, C_t = column(B, b, d, t), column(C, b, d, t)
                h = [math.exp(dt * float(A[d, n])) * h[n] + dt * B_t[n] * x for n in range(dstate)]
                y = sum(C_t[n] * h[n] for n in range(dstate))
                if D is not None:
                    y += float(D[d]) * x
                if z is not None:
                    zt = float(z[b, d, t])
                    y *= zt / (1.0 + math.exp(-zt))
                out[b, d, t] = y
            last[b, d] = torch.tensor(h, dtype=torch.float64)
    return out, last


def make_inputs(batch, dim, dstate, length, form="variable", dtype=torch.float64, seed=0):
    """Random scan inputs; form is 'variable' (b, n, l), 'groupsG' (b, G, n, l) or 'constant' (d, n) for B and C."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    if form == "variable":
        bc_shape = (batch, dstate, length)
    elif form == "constant":
        bc_shape = (dim, dstate)
    else:
        bc_shape = (batch, int(form.removeprefix("groups")), dstate, length)
    return dict(u=randn(batch, dim, length), delta=0.5 * randn(batch, dim, length),
                A=-torch.exp(0.5 * randn(dim, dstate)), B=randn(*bc_shape), C=randn(*bc_shape), D=randn(dim),
                z=randn(batch, dim, length), delta_bias=0.3 * randn(dim))


def relative_error(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300)).item()


SHAPES = [  # batch, dim, dstate, length, form of B and C
    (1, 1, 1, 1, "variable"),
    (2, 3, 4, 1, "variable"),
    (2, 4, 3, 7, "variable"),
    (3, 6, 5, 13, "groups3"),
    (2, 4, 2, 9, "groups1"),
    (2, 4, 3, 5, "constant"),
]
OPTIONS = [  # which optional inputs are given, delta_softplus, return_last_state
    dict(D=True, z=True, delta_bias=True, delta_softplus=True, return_last_state=True),
    dict(D=False, z=False, delta_bias=False, delta_softplus=False, return_last_state=False),
    dict(D=True, z=False, delta_bias=True, delta_softplus=False, return_last_state=True),
    dict(D=False, z=True, delta_bias=False, delta_softplus=True, return_last_state=False),
]


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 3), dim=st.integers(1, 6), dstate=st.integers(1, 5), length=st.integers(1, 23),
       form=st.sampled_from(["variable", "constant", "groups1"]), softplus=st.booleans(), seed=st.integers(0, 999))
def test_random_shapes_match_the_recurrence_in_float64(batch, dim, dstate, length, form, softplus, seed):
    inputs = make_inputs(batch, dim, dstate, length, form, seed=seed)
    expected_out, expected_last = step_by_step(**inputs, delta_softplus=softplus)
    for fn in (selective_scan_fn, selective_scan_ref):
        out, last = fn(**inputs, delta_softplus=softplus, return_last_state=True)
        assert relative_error(out, expected_out) < 1e-10, fn.__name__
        assert relative_error(last, expected_last) < 1e-10, fn.__name__


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(k for k, v in o.items() if v) or "plain")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_both_paths_match_the_recurrence_in_float64(shape, options):
    batch, dim, dstate, length, form = shape
    inputs = make_inputs(batch, dim, dstate, length, form)
    for name in ("D", "z", "delta_bias"):
        if not options[name]:
            inputs[name] = None
    expected_out, expected_last = step_by_step(**inputs, delta_softplus=options["delta_softplus"])
    for fn in (selective_scan_fn, selective_scan_ref):
        result = fn(**inputs, delta_softplus=options["delta_softplus"],
                    return_last_state=options["return_last_state"])
        if options["return_last_state"]:
            out, last = result
            assert last.shape == (batch, dim, dstate) and last.dtype == torch.float64
            assert relative_error(last, expected_last) < 1e-10, fn.__name__
        else:
            out = result
        assert out.shape == (batch, dim, length) and out.dtype == torch.float64
        assert relative_error(out, expected_out) < 1e-10, fn.__name__


def test_cpu_dispatch_uses_the_fused_kernel_for_variable_B_and_C():
    variable = make_inputs(2, 4, 3, 5)
    assert scan_backend(variable["u"], variable["A"], variable["B"], variable["C"]) == "cpu_fused"
    grouped = make_inputs(2, 4, 3, 5, "groups2")
    assert scan_backend(grouped["u"], grouped["A"], grouped["B"], grouped["C"]) == "cpu_fused"
    constant = make_inputs(2, 4, 3, 5, "constant")
    assert scan_backend(constant["u"], constant["A"], constant["B"], constant["C"]) == "reference"


@pytest.mark.parametrize("form", ["variable", "groups2"])
def test_fused_cpu_gradients_pass_gradcheck(form):
    inputs = make_inputs(2, 4, 3, 6, form, seed=1)
    names = list(inputs)
    tensors = [inputs[name].clone().requires_grad_() for name in names]

    def fn(*tensors):
        return selective_scan_fn(**dict(zip(names, tensors)), delta_softplus=True, return_last_state=True)

    assert scan_backend(inputs["u"], inputs["A"], inputs["B"], inputs["C"]) == "cpu_fused"
    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("form", ["variable", "groups4"])
def test_fused_cpu_gradients_equal_the_reference_gradients(form):
    inputs = make_inputs(3, 8, 4, 33, form, seed=2)
    weights = torch.randn(3, 8, 33, dtype=torch.float64), torch.randn(3, 8, 4, dtype=torch.float64)
    grads = {}
    for fn in (selective_scan_fn, selective_scan_ref):
        leaves = {name: t.clone().requires_grad_() for name, t in inputs.items()}
        out, last = fn(**leaves, delta_softplus=True, return_last_state=True)
        ((out * weights[0]).sum() + (last * weights[1]).sum()).backward()
        grads[fn] = {name: t.grad for name, t in leaves.items()}
    for name in inputs:
        assert relative_error(grads[selective_scan_fn][name], grads[selective_scan_ref][name]) < 1e-10, name


def test_float32_fused_path_is_close_to_float64():
    inputs = make_inputs(2, 16, 16, 200, seed=3)
    inputs["delta"] = inputs["delta"] - 1.0
    expected = selective_scan_ref(**inputs, delta_softplus=True)
    leaves = {name: t.float().requires_grad_() for name, t in inputs.items()}
    out = selective_scan_fn(**leaves, delta_softplus=True)
    assert out.dtype == torch.float32
    assert relative_error(out, expected) < 1e-5
    out.sum().backward()
    reference = {name: t.clone().requires_grad_() for name, t in inputs.items()}
    selective_scan_ref(**reference, delta_softplus=True).sum().backward()
    for name in inputs:
        assert relative_error(leaves[name].grad, reference[name].grad) < 1e-4, name


def test_results_do_not_depend_on_the_thread_count():
    inputs = make_inputs(1, 5, 3, 17, seed=4)  # 5 rows over 3 threads: uneven shares, per-thread dB/dC sums
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            leaves = {name: t.clone().requires_grad_() for name, t in inputs.items()}
            out, last = selective_scan_fn(**leaves, delta_softplus=True, return_last_state=True)
            (out.square().sum() + last.sum()).backward()
            results.append([out, last] + [leaves[name].grad for name in inputs])
    finally:
        torch.set_num_threads(threads)
    for one, three in zip(*results):
        assert relative_error(three, one) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_float32(dtype):
    inputs = make_inputs(2, 8, 4, 21, seed=5, dtype=torch.float32)
    for name in ("u", "delta", "B", "C", "z"):  # activations in half; A, D, delta_bias stay float32 as in Mamba
        inputs[name] = inputs[name].to(dtype)
    upcast = {name: t.float() for name, t in inputs.items()}
    expected_out, expected_last = selective_scan_ref(**upcast, delta_softplus=True, return_last_state=True)
    leaves = {name: t.clone().requires_grad_() for name, t in inputs.items()}
    for fn in (selective_scan_fn, selective_scan_ref):
        out, last = fn(**leaves, delta_softplus=True, return_last_state=True)
        assert out.dtype == dtype and last.dtype == torch.float32  # mamba-ssm: out in u's dtype, state in float32
        assert relative_error(out, expected_out) < 1e-2  # one rounding to half/bfloat16
        assert relative_error(last, expected_last) < 1e-5
    out.float().sum().backward()
    assert leaves["u"].grad.dtype == dtype and leaves["A"].grad.dtype == torch.float32


def test_fused_forward_saves_no_per_state_tensors():
    batch, dim, dstate, length = 2, 32, 32, 64
    inputs = {name: t.float().requires_grad_() for name, t in make_inputs(batch, dim, dstate, length).items()}
    saved = {}  # storage address -> bytes, so tensors saved twice (u is also x) count once

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan_fn(**inputs, delta_softplus=True)
    one_state_tensor = batch * dim * length * dstate * 4  # the reference loop saves several of these
    assert max(saved.values()) < one_state_tensor / 8
    assert sum(saved.values()) < one_state_tensor / 2


def test_bad_inputs_raise_clear_errors():
    inputs = make_inputs(2, 4, 3, 5)
    with pytest.raises(TypeError, match="complex A"):
        selective_scan_fn(**{**inputs, "A": torch.complex(inputs["A"], inputs["A"])})
    with pytest.raises(ValueError, match="B must be"):
        selective_scan_fn(**{**inputs, "B": inputs["B"][:, :2]})
    with pytest.raises(ValueError, match="C must be"):
        selective_scan_fn(**{**inputs, "C": torch.randn(2, 3, 3, 5, dtype=torch.float64)})  # 3 groups, dim 4
    with pytest.raises(ValueError, match="delta must"):
        selective_scan_fn(**{**inputs, "delta": inputs["delta"][..., :4]})
    with pytest.raises(ValueError, match="delta_bias must"):
        selective_scan_ref(**{**inputs, "delta_bias": torch.zeros(3)})


def test_module_imports_without_mamba_ssm_and_never_imports_it_eagerly():
    code = ("import sys\n"
            "import torch\n"
            "from ecgmamba import selective_scan as s\n"
            "assert 'mamba_ssm' not in sys.modules\n"
            "sys.modules['mamba_ssm'] = None\n"  # `import mamba_ssm` now fails as if it were not installed
            "assert s.load_mamba_selective_scan() is None\n"
            "u = torch.randn(1, 2, 3); B = torch.randn(1, 4, 3)\n"
            "assert s.scan_backend(u, torch.randn(2, 4), B, B) == 'cpu_fused'\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_a_broken_mamba_extension_falls_back(tmp_path, monkeypatch):
    package = tmp_path / "mamba_ssm" / "ops"
    package.mkdir(parents=True)
    (tmp_path / "mamba_ssm" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "selective_scan_interface.py").write_text(
        "raise OSError('libcudart.so.12: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(scan, "_mamba_fn", scan._MAMBA_UNSET)
    for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
        monkeypatch.delitem(sys.modules, name)
    try:
        assert scan.load_mamba_selective_scan() is None
    finally:
        for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
            del sys.modules[name]


def test_kernels_compile_without_a_writable_cache(monkeypatch):
    numba = pytest.importorskip("numba")

    def no_locator(self):
        raise RuntimeError("cannot cache function: no locator available for file")

    monkeypatch.setattr(numba.core.dispatcher.Dispatcher, "enable_caching", no_locator)
    add_one = scan._njit()(lambda x: x + 1)
    assert add_one(1) == 2


@pytest.mark.skipif(not torch.cuda.is_available() or scan.load_mamba_selective_scan() is None,
                    reason="needs CUDA and mamba-ssm with its CUDA extension")
def test_cuda_mamba_kernel_matches_the_cpu_kernel():
    inputs = {name: t.float() for name, t in make_inputs(2, 64, 16, 300, seed=6).items()}
    results = {}
    for device in ("cpu", "cuda"):
        leaves = {name: t.to(device).requires_grad_() for name, t in inputs.items()}
        assert scan_backend(leaves["u"], leaves["A"], leaves["B"], leaves["C"]) == (
            "mamba_ssm" if device == "cuda" else "cpu_fused")
        out, last = selective_scan_fn(**leaves, delta_softplus=True, return_last_state=True)
        (out * torch.linspace(-1, 1, out.shape[-1], device=device)).sum().backward()
        results[device] = [out, last] + [leaves[name].grad for name in inputs]
    for name, cpu, cuda in zip(["out", "last_state"] + list(inputs), results["cpu"], results["cuda"]):
        assert relative_error(cuda.cpu(), cpu) < 1e-3, name


# --------------------------------------------------------------------------------------------------------------------
# The chunked PyTorch scan: what a GPU without mamba-ssm runs


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 3), dim=st.integers(1, 6), dstate=st.integers(1, 5), length=st.integers(1, 40),
       chunk=st.integers(1, 17), groups1=st.booleans(), softplus=st.booleans(), seed=st.integers(0, 999))
def test_chunked_scan_matches_the_recurrence_for_any_chunk_length(batch, dim, dstate, length, chunk, groups1,
                                                                  softplus, seed):
    inputs = make_inputs(batch, dim, dstate, length, "groups1" if groups1 else "variable", seed=seed)
    expected_out, expected_last = step_by_step(**inputs, delta_softplus=softplus)
    out, last = scan.selective_scan_chunked(**inputs, delta_softplus=softplus, return_last_state=True, chunk=chunk)
    assert relative_error(out, expected_out) < 1e-10
    assert relative_error(last, expected_last) < 1e-10


@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
@pytest.mark.parametrize("form", ["variable", "groups2"])
def test_chunked_scan_gradients_equal_the_reference_gradients(form, chunk):
    inputs = make_inputs(2, 4, 3, 29, form, seed=7)
    weights = torch.randn(2, 4, 29, dtype=torch.float64), torch.randn(2, 4, 3, dtype=torch.float64)
    grads = []
    for fn in (lambda **k: scan.selective_scan_chunked(**k, chunk=chunk), selective_scan_ref):
        leaves = {name: t.clone().requires_grad_() for name, t in inputs.items()}
        out, last = fn(**leaves, delta_softplus=True, return_last_state=True)
        ((out * weights[0]).sum() + (last * weights[1]).sum()).backward()  # the last state's gradient too
        grads.append({name: t.grad for name, t in leaves.items()})
    for name in inputs:
        assert relative_error(grads[0][name], grads[1][name]) < 1e-10, name


@pytest.mark.parametrize("backend", ["chunked", "cpu_fused"])
def test_scan_backward_works_under_non_reentrant_activation_checkpointing(backend, monkeypatch):
    # Non-reentrant checkpointing recomputes saved tensors on unpack and allows one unpack per backward; a second
    # read of ctx.saved_tensors raised CheckpointError on an H200 (the chunked scan, `paper` with checkpointing on).
    monkeypatch.setenv("ECGMAMBA_SCAN", backend)
    inputs = make_inputs(2, 4, 3, 29, seed=9)
    weights = torch.randn(2, 4, 29, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def loss(*tensors):
        return (selective_scan_fn(**dict(zip(inputs, tensors)), delta_softplus=True) * weights).sum()

    grads = []
    for checkpointed in (False, True):
        leaves = [t.clone().requires_grad_() for t in inputs.values()]
        value = torch.utils.checkpoint.checkpoint(loss, *leaves, use_reentrant=False) if checkpointed else loss(*leaves)
        grads.append(torch.autograd.grad(value, leaves))
    for name, plain, checkpointed in zip(inputs, *grads):
        assert relative_error(checkpointed, plain) < 1e-12, name


def test_chunked_scan_passes_gradcheck():
    inputs = make_inputs(2, 3, 2, 9, seed=8)
    names = list(inputs)

    def fn(*tensors):
        return scan.selective_scan_chunked(**dict(zip(names, tensors)), delta_softplus=True, return_last_state=True,
                                           chunk=4)

    assert torch.autograd.gradcheck(fn, [inputs[n].clone().requires_grad_() for n in names], eps=1e-6, atol=1e-8)


def test_chunked_scan_in_float32_stays_finite_where_log_space_rescaling_overflows():
    # sum(dt * A) over the record reaches -2000: exp(+2000) would overflow any cumsum-based rescaling
    inputs = {name: t.float() for name, t in make_inputs(1, 4, 4, 400, seed=9).items()}
    inputs["A"] = -5.0 * torch.ones(4, 4)
    inputs["delta"] = torch.ones(1, 4, 400)
    expected = selective_scan_ref(**{k: v.double() for k, v in inputs.items()})
    out = scan.selective_scan_chunked(**inputs, chunk=128)
    assert torch.isfinite(out).all() and relative_error(out, expected) < 1e-5


def test_chunked_forward_keeps_only_boundary_states():
    batch, dim, dstate, length, chunk = 2, 32, 16, 512, 32
    inputs = {name: t.float().requires_grad_() for name, t in make_inputs(batch, dim, dstate, length).items()}
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        scan.selective_scan_chunked(**inputs, delta_softplus=True, chunk=chunk)
    one_state_tensor = batch * dim * length * dstate * 4
    # inputs-sized tensors and the (chunks x state) boundaries, never a (length x state) one
    assert max(saved.values()) < one_state_tensor / 8 and sum(saved.values()) < one_state_tensor / 2


def test_chunk_length_bounds_the_working_tensors():
    assert scan._chunk_length(32, 768, 16, 729) == (1 << 23) // (32 * 768 * 16)  # paper: batch 32, d_inner 768
    assert scan._chunk_length(1, 4, 2, 10) == 10
    assert scan._chunk_length(4096, 4096, 64, 10) == 1


def test_cuda_without_mamba_ssm_takes_the_chunked_scan_and_says_how_to_fix_it(monkeypatch):
    from ecgmamba.model import backend_report

    monkeypatch.setattr(scan, "_mamba_fn", None)  # mamba-ssm not importable
    assert scan.pick_backend("cuda") == "chunked"
    assert scan.pick_backend("cuda", variable=False) == "reference"
    line, warning = backend_report("cuda")
    assert "chunked PyTorch scan" in line
    assert "mamba-ssm" in warning and "Docker" in warning and "requirements-cuda.txt" in warning
    assert backend_report("cpu") == ("Backends on cpu: selective scan: numba CPU kernel; causal conv: PyTorch conv1d",
                                     None)


def test_ecgmamba_scan_forces_a_backend_and_the_model_agrees_across_backends(monkeypatch):
    from ecgmamba.model import ECGMamba, ModelConfig

    torch.manual_seed(0)
    model = ECGMamba(ModelConfig(num_samples=256, d_model=16, depth=2, d_state=4, stem_channels=8,
                                 stem_paddings=(2, 7))).eval()
    x = torch.randn(2, 12, 256)
    outputs = {}
    for backend in ("cpu_fused", "chunked", "reference"):
        monkeypatch.setenv("ECGMAMBA_SCAN", backend)
        inputs = make_inputs(1, 2, 3, 4, dtype=torch.float32)
        assert scan_backend(inputs["u"], inputs["A"], inputs["B"], inputs["C"]) == backend
        with torch.no_grad():
            outputs[backend] = model(x)
    for backend in ("chunked", "reference"):
        assert relative_error(outputs[backend], outputs["cpu_fused"]) < 1e-5, backend
    monkeypatch.setenv("ECGMAMBA_SCAN", "warp")
    with pytest.raises(ValueError, match="ECGMAMBA_SCAN"):
        scan.pick_backend("cpu")
    monkeypatch.setenv("ECGMAMBA_SCAN", "mamba_ssm")
    monkeypatch.setattr(scan, "_mamba_fn", None)
    with pytest.raises(RuntimeError, match="needs CUDA"):
        scan.pick_backend("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_chunked_scan_matches_the_cpu_kernel():
    inputs = {name: t.float() for name, t in make_inputs(2, 64, 16, 300, seed=6).items()}
    results = {}
    for device, fn in (("cpu", selective_scan_fn), ("cuda", scan.selective_scan_chunked)):
        leaves = {name: t.to(device).requires_grad_() for name, t in inputs.items()}
        out, last = fn(**leaves, delta_softplus=True, return_last_state=True)
        (out * torch.linspace(-1, 1, out.shape[-1], device=device)).sum().backward()
        results[device] = [out, last] + [leaves[name].grad for name in inputs]
    for name, cpu, cuda in zip(["out", "last_state"] + list(inputs), results["cpu"], results["cuda"]):
        assert relative_error(cuda.cpu(), cpu) < 1e-4, name


def test_chunked_scan_stays_float32_under_autocast():
    # autocast would run the chunk contractions (einsum) in bfloat16; the scan must not follow it
    inputs = {name: t.float() for name, t in make_inputs(2, 8, 4, 40, seed=10).items()}
    weights = torch.randn(2, 8, 40)
    results = []
    for enabled in (False, True):
        leaves = {name: t.clone().requires_grad_() for name, t in inputs.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            out = scan.selective_scan_chunked(**leaves, delta_softplus=True, chunk=16)
        (out * weights).sum().backward()
        results.append([out] + [leaves[name].grad for name in inputs])
    for name, plain, autocast in zip(["out"] + list(inputs), *results):
        assert plain.dtype == autocast.dtype == torch.float32 and relative_error(autocast, plain) < 1e-6, name
