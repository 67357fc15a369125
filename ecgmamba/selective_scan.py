"""The Mamba selective scan: one call, two backends, so one set of weights trains and runs on CUDA or on the CPU.

`selective_scan_fn` has the signature and semantics of mamba-ssm's `selective_scan_fn`
(mamba_ssm/ops/selective_scan_interface.py):

    u, delta: (batch, dim, length)      A: (dim, dstate), real      D, delta_bias: (dim,)
    B, C: (batch, dstate, length), grouped (batch, groups, dstate, length) with dim % groups == 0, or (dim, dstate)
    z: (batch, dim, length)

    delta'_t = softplus(delta_t + delta_bias)       (softplus only with delta_softplus=True)
    h_t      = exp(delta'_t A) * h_{t-1} + delta'_t B_t u_t,   h_{-1} = 0
    out_t    = (<C_t, h_t> + D u_t) * silu(z_t)     (each term only when given)

Half and bfloat16 inputs are computed in float32, float64 in float64; `out` has u's dtype and the last state
(batch, dim, dstate) the computation's dtype, as in mamba-ssm.

Backends: on CUDA, mamba-ssm's fused kernel when mamba-ssm imports and its extension loads (imported lazily, never
required), else an exact chunked scan in plain PyTorch ops with bounded memory (selective_scan_chunked). On the CPU, variable B and C go to numba kernels with a hand-written backward
that never materialise a (batch, dim, length, dstate) tensor: the forward saves only its inputs, the backward
recomputes the states one channel at a time. Constant B or C takes the reference loop. Unlike mamba-ssm's
CUDA kernel, which drops it, the CPU kernels also back-propagate a gradient of the returned last state.
"""
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

try:
    import numba
except ImportError:  # numba is in requirements.txt; without it the CPU path is the chunked PyTorch scan
    numba = None


# --------------------------------------------------------------------------------------------------------------------
# Input checks and dtypes


def _check_inputs(u, delta, A, B, C, D, z, delta_bias):
    if A.is_complex():
        raise TypeError("selective_scan: complex A is not supported (only the real-valued Mamba scan is implemented)")
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, length), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if length == 0:
        raise ValueError("selective_scan: the sequences are empty (length 0)")
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim or A.shape[1] == 0:
        raise ValueError(f"selective_scan: A must be (dim={dim}, dstate > 0), got shape {tuple(A.shape)}")
    dstate = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        if M.is_complex():
            raise TypeError(f"selective_scan: complex {name} is not supported")
        if M.dim() == 2:
            ok = M.shape == (dim, dstate)
        elif M.dim() == 3:
            ok = M.shape == (batch, dstate, length)
        elif M.dim() == 4:
            ok = M.shape[0] == batch and M.shape[2:] == (dstate, length) and M.shape[1] > 0 and dim % M.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"selective_scan: {name} must be (dim, dstate)=({dim}, {dstate}), (batch, dstate, length)="
                f"({batch}, {dstate}, {length}) or (batch, groups, dstate, length) with groups dividing {dim}; "
                f"got shape {tuple(M.shape)}")
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and v.shape != (dim,):
            raise ValueError(f"selective_scan: {name} must be (dim={dim},), got shape {tuple(v.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")


def _compute_dtype(*tensors):
    """float32 for half/bfloat16/float32 inputs, float64 as soon as one input is float64."""
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _grouped(M):
    """Variable B or C as (batch, groups, dstate, length); (batch, dstate, length) is one group."""
    return M.unsqueeze(1) if M.dim() == 3 else M


# --------------------------------------------------------------------------------------------------------------------
# Reference: the plain PyTorch loop, differentiable by autograd, any device and dtype


def _effective_delta(delta, delta_bias, delta_softplus, dtype):
    """delta + delta_bias, through softplus when asked: the step size both implementations scan with."""
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    return F.softplus(dt) if delta_softplus else dt


def _skip_and_gate(y, x, D, z):
    """out = (y + D x) * silu(z), each term only when given: the elementwise end every implementation shares."""
    if D is not None:
        y = y + x * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """The selective scan as a readable loop over time; materialises (batch, dim, length, dstate).

    This is the reference the fast paths are tested against, and the path for constant B/C (which the model never
    uses).
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, length = u.shape
    dstate = A.shape[1]
    x = u.to(dtype)
    dt = _effective_delta(delta, delta_bias, delta_softplus, dtype)

    # The per-step decay and input, time-major so that unbind(1) walks over time.
    deltaA = torch.exp(torch.einsum("bdl,dn->bldn", dt, A.to(dtype)))
    if B.dim() == 2:
        deltaB_u = torch.einsum("bdl,dn->bldn", dt * x, B.to(dtype))
    else:
        Bg = _grouped(B).to(dtype)
        groups = Bg.shape[1]
        dtx = (dt * x).view(batch, groups, dim // groups, length)
        deltaB_u = torch.einsum("bghl,bgnl->blghn", dtx, Bg).reshape(batch, length, dim, dstate)

    h = x.new_zeros(batch, dim, dstate)
    states = []
    for decay, drive in zip(deltaA.unbind(1), deltaB_u.unbind(1)):
        h = decay * h + drive
        states.append(h)
    states = torch.stack(states, dim=2)  # (batch, dim, length, dstate)

    if C.dim() == 2:
        y = torch.einsum("bdln,dn->bdl", states, C.to(dtype))
    else:
        Cg = _grouped(C).to(dtype)
        groups = Cg.shape[1]
        y = torch.einsum("bghln,bgnl->bghl", states.view(batch, groups, dim // groups, length, dstate), Cg)
        y = y.reshape(batch, dim, length)
    out = _skip_and_gate(y, x, D, z).to(u.dtype)
    return (out, h) if return_last_state else out


# --------------------------------------------------------------------------------------------------------------------
# CPU path: softplus, D and the silu(z) gate are cheap elementwise torch ops (autograd differentiates them); only the
# scan y_t = <C_t, h_t> itself is a numba kernel with a hand-written backward. Kernel layouts: u, dt, y: (batch, dim,
# length); B, C: (batch, groups, length, dstate), so one step's dstate values are contiguous and the loops over them
# vectorise; A: (dim, dstate). fastmath stays off; the one liberty is a vectorisable float32 exp (libm's scalar exp
# is most of the time otherwise).


def _exp_f32(x):
    """exp for float32 that LLVM can vectorise: 2^k * p(r) with x = k ln2 + r, |r| <= ln2/2.

    Relative error below 1.1e-7 (float32's epsilon is 1.2e-7). Results below the smallest normal float32 (x < -87.3)
    flush to 0, x > 88.3 gives inf (float32 overflows from 88.72 on), NaN stays NaN.
    """
    xc = min(max(x, np.float32(-87.3)), np.float32(88.3))
    k = np.floor(xc * np.float32(1.44269504088896341) + np.float32(0.5))
    r = xc - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)  # Cody-Waite: ln2 = hi - lo, exact k*hi
    p = np.float32(1.0 / 5040.0)  # Taylor series of exp(r) to r^7
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    e = p * np.int32((np.int32(k) + 127) << 23).view(np.float32)  # times 2^k, built in the exponent bits
    if x < np.float32(-87.3):
        e = np.float32(0.0)
    if x > np.float32(88.3):
        e = np.float32(np.inf)
    if x != x:
        e = x
    return e


def _exp(x):
    """exp inside the kernels: the vectorisable one for float32, libm's for float64."""
    return math.exp(x)


def _njit():
    """numba.njit without the GIL, with on-disk caching, or without it where no cache directory is writable."""
    def decorate(function):
        try:
            return numba.njit(nogil=True, fastmath=False, cache=True)(function)
        except RuntimeError:  # "cannot cache function ...: no locator available for file ..." (read-only install)
            return numba.njit(nogil=True, fastmath=False, cache=False)(function)
    return decorate


if numba is not None:
    _exp_f32 = numba.njit(inline="always", fastmath=False)(_exp_f32)

    @numba.extending.overload(_exp, inline="always")
    def _exp_overload(x):
        if isinstance(x, numba.types.Float) and x.bitwidth == 32:
            return lambda x: _exp_f32(x)
        return lambda x: math.exp(x)
else:  # the kernels below are then plain, never-called functions: scan_backend picks the chunked scan
    def _njit():
        return lambda function: function


@_njit()
def _scan_channel(u, dt, A, B, C, y, h):
    """One (batch, channel) row. u, dt, y: (length,); A, h: (dstate,); B, C: (length, dstate). h ends as h_{L-1}."""
    length, dstate = B.shape
    h[:] = 0.0
    for t in range(length):
        dt_t = dt[t]
        dtu = dt_t * u[t]
        B_t = B[t]
        C_t = C[t]
        for n in range(dstate):
            h[n] = _exp(dt_t * A[n]) * h[n] + dtu * B_t[n]
        y_t = C_t[0] * h[0]
        for n in range(1, dstate):
            y_t += C_t[n] * h[n]
        y[t] = y_t


@_njit()
def _scan_channel_backward(u, dt, A, B, C, dy, dlast, du, ddt, dA, dB, dC, states, decays, dh, dlog, dBh):
    """Gradients of one (batch, channel) row: writes du, ddt (length,); adds into dA (dstate,), dB, dC (length, dstate).

    The states are recomputed first (states[t + 1] = h_t, states[0] = h_{-1} = 0, decays[t] = exp(dt_t A)); then
    time runs backwards with dh = dL/dh_t = dy_t C_t + exp(dt_{t+1} A) dL/dh_{t+1} (+ dlast at the last step).
    """
    length, dstate = B.shape
    h = dh  # dh doubles as the running state during the recompute
    h[:] = 0.0
    states[0, :] = 0.0
    for t in range(length):
        dt_t = dt[t]
        dtu = dt_t * u[t]
        B_t = B[t]
        decays_t = decays[t]
        states_t = states[t + 1]
        for n in range(dstate):
            a = _exp(dt_t * A[n])
            decays_t[n] = a
            h[n] = a * h[n] + dtu * B_t[n]
            states_t[n] = h[n]

    dh[:] = dlast
    for t in range(length - 1, -1, -1):
        dt_t = dt[t]
        u_t = u[t]
        dy_t = dy[t]
        dtu = dt_t * u_t
        B_t, C_t, dB_t, dC_t = B[t], C[t], dB[t], dC[t]
        h_t, h_prev, decays_t = states[t + 1], states[t], decays[t]
        for n in range(dstate):
            dC_t[n] += dy_t * h_t[n]
            dh_n = dh[n] + dy_t * C_t[n]
            dlog_n = dh_n * h_prev[n] * decays_t[n]  # dL/d(dt_t A_n), through the decay
            dA[n] += dlog_n * dt_t
            dlog[n] = dlog_n * A[n]
            dBh[n] = dh_n * B_t[n]
            dB_t[n] += dh_n * dtu
            dh[n] = decays_t[n] * dh_n
        dlog_sum = dlog[0]
        dBh_sum = dBh[0]
        for n in range(1, dstate):
            dlog_sum += dlog[n]
            dBh_sum += dBh[n]
        ddt[t] = dlog_sum + dBh_sum * u_t
        du[t] = dBh_sum * dt_t


@_njit()
def _scan_forward_rows(u, dt, A, B, C, y, last_state, start, stop):
    """Channels start..stop-1 of the flattened (batch, dim) grid; runs without the GIL on a pool thread."""
    dim = u.shape[1]
    dim_per_group = dim // B.shape[1]
    for row in range(start, stop):
        b, d = row // dim, row % dim
        g = d // dim_per_group
        _scan_channel(u[b, d], dt[b, d], A[d], B[b, g], C[b, g], y[b, d], last_state[b, d])


@_njit()
def _scan_backward_rows(u, dt, A, B, C, dy, dlast, du, ddt, dA, dB, dC, start, stop):
    """Gradients of channels start..stop-1; dB and dC (batch, groups, length, dstate) belong to this thread alone."""
    dim, length = u.shape[1], u.shape[2]
    dstate = A.shape[1]
    dim_per_group = dim // B.shape[1]
    states = np.empty((length + 1, dstate), dtype=u.dtype)
    decays = np.empty((length, dstate), dtype=u.dtype)
    dh = np.empty(dstate, dtype=u.dtype)
    dlog = np.empty(dstate, dtype=u.dtype)
    dBh = np.empty(dstate, dtype=u.dtype)
    for row in range(start, stop):
        b, d = row // dim, row % dim
        g = d // dim_per_group
        _scan_channel_backward(u[b, d], dt[b, d], A[d], B[b, g], C[b, g], dy[b, d], dlast[b, d], du[b, d],
                               ddt[b, d], dA[b, d], dB[b, g], dC[b, g], states, decays, dh, dlog, dBh)


def _cpu_kernels_available():
    return numba is not None


_pool = None
_pool_key = None


def _thread_pool(threads):
    """A pool of threads-1 workers (the caller takes one share), rebuilt when the count changes or after a fork."""
    global _pool, _pool_key
    key = (threads, os.getpid())
    if _pool_key != key:
        if _pool is not None and _pool_key[1] == os.getpid():
            _pool.shutdown(wait=False)
        _pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="selective_scan")
        _pool_key = key
    return _pool


def _run_rows(kernel, rows, threads, args_of_share):
    """Split rows into `threads` contiguous shares and run kernel(*args_of_share(i), start, stop) on each."""
    bounds = np.linspace(0, rows, threads + 1).round().astype(np.int64)
    if threads == 1:
        kernel(*args_of_share(0), 0, rows)
        return
    pool = _thread_pool(threads)
    futures = [pool.submit(kernel, *args_of_share(i), bounds[i], bounds[i + 1]) for i in range(1, threads)]
    kernel(*args_of_share(0), bounds[0], bounds[1])
    for future in futures:
        future.result()


def _threads_for(rows):
    """torch's thread setting (torch.set_num_threads), but no more threads than rows."""
    return max(1, min(torch.get_num_threads(), rows))


def _np(t):
    return t.detach().numpy()


class _CpuScan(torch.autograd.Function):
    """y_t = <C_t, h_t> on the CPU. Saves only its inputs; the backward recomputes the states channel by channel.

    Inputs in kernel layout, contiguous, one float dtype: u, dt (batch, dim, length), A (dim, dstate),
    Bt, Ct (batch, groups, length, dstate). Returns y (batch, dim, length) and the last state (batch, dim, dstate).
    """

    @staticmethod
    def forward(ctx, u, dt, A, Bt, Ct):
        batch, dim, _ = u.shape
        y = torch.empty_like(u)
        last_state = u.new_empty(batch, dim, A.shape[1])
        args = (_np(u), _np(dt), _np(A), _np(Bt), _np(Ct), _np(y), _np(last_state))
        _run_rows(_scan_forward_rows, batch * dim, _threads_for(batch * dim), lambda share: args)
        ctx.save_for_backward(u, dt, A, Bt, Ct)
        return y, last_state

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dlast):
        u, dt, A, Bt, Ct = ctx.saved_tensors
        batch, dim, _ = u.shape
        dy = torch.zeros_like(u) if dy is None else dy.contiguous()
        dlast = u.new_zeros(batch, dim, A.shape[1]) if dlast is None else dlast.contiguous()
        threads = _threads_for(batch * dim)
        du = torch.empty_like(u)
        ddt = torch.empty_like(u)
        dA = u.new_zeros(batch, dim, A.shape[1])
        dB = Bt.new_zeros((threads,) + Bt.shape)  # one partial sum per thread: channels of a group share B_t
        dC = Ct.new_zeros((threads,) + Ct.shape)
        shared = (_np(u), _np(dt), _np(A), _np(Bt), _np(Ct), _np(dy), _np(dlast), _np(du), _np(ddt), _np(dA))
        dB_np, dC_np = _np(dB), _np(dC)
        _run_rows(_scan_backward_rows, batch * dim, threads, lambda share: shared + (dB_np[share], dC_np[share]))
        return du, ddt, dA.sum(0), dB.sum(0), dC.sum(0)


def _selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    x = u.to(dtype)
    dt = _effective_delta(delta, delta_bias, delta_softplus, dtype)
    Bt, Ct = (_grouped(M).to(dtype).transpose(-1, -2).contiguous() for M in (B, C))
    y, last_state = _CpuScan.apply(x.contiguous(), dt.contiguous(), A.to(dtype).contiguous(), Bt, Ct)
    out = _skip_and_gate(y, x, D, z).to(u.dtype)
    return (out, last_state) if return_last_state else out


# --------------------------------------------------------------------------------------------------------------------
# Chunked PyTorch path, for a GPU without mamba-ssm (and any device): exact, float32, bounded memory. Time is cut
# into chunks of `chunk` steps; inside a chunk the linear recurrence h_t = a_t h_{t-1} + x_t is solved in
# ceil(log2(chunk)) doubling steps (Hillis-Steele) on (batch, dim, chunk, dstate) tensors, and chunks are chained
# through their boundary states. The forward keeps only those boundary states (batch, dim, chunks, dstate); the
# backward walks the chunks in reverse, recomputes each chunk's states from its boundary state, and solves the
# adjoint recurrence dL/dh_t = C_t dy_t + a_{t+1} dL/dh_{t+1} with the same doubling scan. So memory is a few
# chunk-sized tensors whatever the length, and no log-space rescaling (which overflows float32 when
# exp(-sum dt A) grows) is needed.

CHUNK_ELEMENTS = 1 << 23  # batch * dim * chunk * dstate per working tensor: 32 MiB in float32


def _chunk_length(batch, dim, dstate, length, elements=None):
    per_step = max(1, batch * dim * dstate)
    return int(max(1, min(length, (elements or CHUNK_ELEMENTS) // per_step)))


def _doubling_scan(a, x):
    """Inclusive scan along dim -2 of h_t = a_t h_{t-1} + x_t with h_{-1} = 0: returns (h, prod_{s<=t} a_s)."""
    steps = a.shape[-2]
    k = 1
    while k < steps:
        x = torch.cat([x[..., :k, :], torch.addcmul(x[..., k:, :], a[..., k:, :], x[..., :-k, :])], dim=-2)
        a = torch.cat([a[..., :k, :], a[..., k:, :] * a[..., :-k, :]], dim=-2)
        k *= 2
    return x, a


class _ChunkedScan(torch.autograd.Function):
    """y_t = <C_t, h_t> by chunks. Inputs: u, dt (batch, groups, heads, length) with heads = dim / groups,
    A (groups, heads, dstate), Bt, Ct (batch, groups, length, dstate), all one float dtype and contiguous.
    Returns y (batch, groups, heads, length) and the last state (batch, groups, heads, dstate)."""

    @staticmethod
    def _chunk_inputs(u, dt, A, Bt, start, stop):
        dt_c = dt[..., start:stop, None]                                   # (b, g, h, T, 1)
        decay = torch.exp(dt_c * A[:, :, None, :])                         # (b, g, h, T, n)
        drive = (dt_c * u[..., start:stop, None]) * Bt[:, :, None, start:stop, :]
        return decay, drive

    @staticmethod
    def forward(ctx, u, dt, A, Bt, Ct, chunk):
        with torch.autocast(u.device.type, enabled=False):  # the scan stays float32 under bf16/fp16 autocast
            return _ChunkedScan._forward(ctx, u, dt, A, Bt, Ct, chunk)

    @staticmethod
    def _forward(ctx, u, dt, A, Bt, Ct, chunk):
        batch, groups, heads, length = u.shape
        dstate = A.shape[-1]
        y = u.new_empty(u.shape)
        starts = list(range(0, length, chunk))
        boundaries = u.new_empty(len(starts), batch, groups, heads, dstate)  # the state before each chunk
        h = u.new_zeros(batch, groups, heads, dstate)
        for i, start in enumerate(starts):
            stop = min(start + chunk, length)
            boundaries[i] = h
            decay, drive = _ChunkedScan._chunk_inputs(u, dt, A, Bt, start, stop)
            states, cumulative = _doubling_scan(decay, drive)
            states = torch.addcmul(states, cumulative, h[..., None, :])
            y[..., start:stop] = torch.einsum("bghtn,bgtn->bght", states, Ct[:, :, start:stop])
            h = states[..., -1, :].clone()
        ctx.save_for_backward(u, dt, A, Bt, Ct, boundaries)
        ctx.chunk = chunk
        return y, h

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dlast):
        # ctx.saved_tensors is read once: under non-reentrant activation checkpointing a second read raises.
        saved = ctx.saved_tensors
        with torch.autocast(saved[0].device.type, enabled=False):
            return _ChunkedScan._backward(saved, ctx.chunk, dy, dlast)

    @staticmethod
    def _backward(saved, chunk, dy, dlast):
        u, dt, A, Bt, Ct, boundaries = saved
        length = u.shape[-1]
        dy = torch.zeros_like(u) if dy is None else dy
        carry = torch.zeros_like(boundaries[0]) if dlast is None else dlast.clone()  # dL/dh at the chunk's end
        du, ddt = torch.empty_like(u), torch.empty_like(u)
        dA = torch.zeros_like(A)
        dB, dC = torch.zeros_like(Bt), torch.zeros_like(Ct)
        starts = list(range(0, length, chunk))
        for i in range(len(starts) - 1, -1, -1):
            start = starts[i]
            stop = min(start + chunk, length)
            h0 = boundaries[i]
            decay, drive = _ChunkedScan._chunk_inputs(u, dt, A, Bt, start, stop)
            states, cumulative = _doubling_scan(decay, drive)
            states = torch.addcmul(states, cumulative, h0[..., None, :])
            C_c, dy_c = Ct[:, :, start:stop], dy[..., start:stop]
            # Adjoint, run backwards in time: flip, then dL/dh_t = g_t + a_{t+1} dL/dh_{t+1}, seeded with carry.
            g = (dy_c[..., None] * C_c[:, :, None]).flip(-2)
            shifted = torch.cat([decay[..., 1:, :], torch.ones_like(decay[..., :1, :])], dim=-2).flip(-2)
            adjoint, through = _doubling_scan(shifted, g)
            dh = torch.addcmul(adjoint, through, carry[..., None, :]).flip(-2)   # (b, g, h, T, n)
            previous = torch.cat([h0[..., None, :], states[..., :-1, :]], dim=-2)
            dC[:, :, start:stop] = torch.einsum("bght,bghtn->bgtn", dy_c, states)
            dt_c, u_c, B_c = dt[..., start:stop], u[..., start:stop], Bt[:, :, start:stop]
            dB[:, :, start:stop] = torch.einsum("bghtn,bght->bgtn", dh, dt_c * u_c)
            d_dtu = torch.einsum("bghtn,bgtn->bght", dh, B_c)
            d_log = dh * previous * decay                                   # dL/d(dt_t A), through the decay
            dA += torch.einsum("bghtn,bght->ghn", d_log, dt_c)
            ddt[..., start:stop] = torch.einsum("bghtn,ghn->bght", d_log, A) + d_dtu * u_c
            du[..., start:stop] = d_dtu * dt_c
            carry = dh[..., 0, :] * decay[..., 0, :]
        return du, ddt, dA, dB, dC, None


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False, chunk=None):
    """The selective scan in chunks of plain PyTorch ops (see above); any device, variable B and C only.
    chunk: time steps per chunk; by default as many as keep a working tensor under CHUNK_ELEMENTS."""
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if B.dim() == 2 or C.dim() == 2:
        raise ValueError("selective_scan_chunked: B and C must vary over time (batch, [groups,] dstate, length)")
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, length = u.shape
    dstate = A.shape[1]
    x = u.to(dtype)
    dt = _effective_delta(delta, delta_bias, delta_softplus, dtype)
    Bg, Cg = _grouped(B), _grouped(C)
    if Bg.shape[1] != Cg.shape[1]:
        raise ValueError(f"selective_scan_chunked: B has {Bg.shape[1]} groups and C {Cg.shape[1]}")
    groups = Bg.shape[1]
    heads = dim // groups
    Bt, Ct = (M.to(dtype).transpose(-1, -2).contiguous() for M in (Bg, Cg))
    chunk = chunk or _chunk_length(batch, dim, dstate, length)
    y, last_state = _ChunkedScan.apply(x.reshape(batch, groups, heads, length).contiguous(),
                                       dt.reshape(batch, groups, heads, length).contiguous(),
                                       A.to(dtype).reshape(groups, heads, dstate).contiguous(), Bt, Ct, chunk)
    y = y.reshape(batch, dim, length)
    out = _skip_and_gate(y, x, D, z).to(u.dtype)
    return (out, last_state.reshape(batch, dim, dstate)) if return_last_state else out


# --------------------------------------------------------------------------------------------------------------------
# Dispatch

_MAMBA_UNSET = object()
_mamba_fn = _MAMBA_UNSET


def load_mamba_selective_scan():
    """mamba-ssm's fused CUDA `selective_scan_fn`, or None when mamba-ssm or its extension is unavailable."""
    global _mamba_fn
    if _mamba_fn is _MAMBA_UNSET:
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as fused
        except (ImportError, OSError, RuntimeError):
            fused = None
        _mamba_fn = fused
    return _mamba_fn


BACKENDS = ("mamba_ssm", "cpu_fused", "chunked", "reference")


def _forced_backend():
    """ECGMAMBA_SCAN=<backend> forces one implementation (benchmarks, tests); unset or 'auto' lets the inputs pick."""
    forced = os.environ.get("ECGMAMBA_SCAN", "auto").strip().lower() or "auto"
    if forced != "auto" and forced not in BACKENDS:
        raise ValueError(f"ECGMAMBA_SCAN={forced!r}: choose auto or one of {', '.join(BACKENDS)}")
    return forced


def scan_backend(u, A, B, C):
    """Which implementation `selective_scan_fn` uses for these inputs: 'mamba_ssm', 'cpu_fused', 'chunked' or
    'reference'."""
    return pick_backend(u.device.type, u.dtype, A.dtype, B.dim() >= 3 and C.dim() >= 3)


def pick_backend(device_type, u_dtype=torch.float32, A_dtype=torch.float32, variable=True):
    """The backend for tensors on `device_type`. CUDA: mamba-ssm's kernel, else the chunked PyTorch scan (never the
    reference loop, whose (batch, dim, length, dstate) tensors run a GPU out of memory). CPU: the numba kernels.
    Constant B or C (variable=False), which the model never uses: the reference loop."""
    forced = _forced_backend()
    if forced != "auto":
        if forced == "mamba_ssm" and not (device_type == "cuda" and load_mamba_selective_scan() is not None):
            raise RuntimeError("ECGMAMBA_SCAN=mamba_ssm needs CUDA tensors and mamba-ssm with its CUDA extension")
        if forced == "cpu_fused" and not (device_type == "cpu" and _cpu_kernels_available()):
            raise RuntimeError("ECGMAMBA_SCAN=cpu_fused needs CPU tensors and numba")
        return forced if variable or forced == "reference" else "reference"
    if device_type == "cuda":
        kernel_dtypes = u_dtype in (torch.float32, torch.float16, torch.bfloat16) and A_dtype == torch.float32
        if kernel_dtypes and load_mamba_selective_scan() is not None:
            return "mamba_ssm"
        return "chunked" if variable else "reference"
    if device_type == "cpu" and variable and _cpu_kernels_available():
        return "cpu_fused"
    return "chunked" if variable else "reference"


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """Selective scan; returns out (batch, dim, length), or (out, last_state) with return_last_state=True."""
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    backend = scan_backend(u, A, B, C)
    if backend == "mamba_ssm":
        return load_mamba_selective_scan()(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if backend == "cpu_fused":
        return _selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if backend == "chunked":
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
