"""The 1D-CNN + bidirectional Mamba ECG classifier.

Layout (after ECG-Mamba and Vision Mamba "bimamba v2"):

    signal (B, leads, samples)
      -> CNN stem: two Conv1d + BatchNorm + ReLU layers  -> tokens (B, L, d_model)
      -> class token (middle as in Vim, or end as in ECG-Mamba-V2) + learned position embedding
      -> depth x Block: residual stream kept in float32, RMSNorm, BiMamba mixer, drop-path
      -> final RMSNorm -> class-token feature (or mean, or mean + max, over tokens) -> Linear -> one logit per class

The BiMamba mixer runs the same selective-state-space branch twice, once on the sequence and once on the flipped
sequence with its own weights (`*_b`), and adds the two. The scan and the causal conv use mamba-ssm's and
causal-conv1d's CUDA kernels when those are installed and the tensors are on a GPU, and pure PyTorch otherwise;
the parameter names are the same on both paths, so one checkpoint serves both.
"""

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ecgmamba.beats import RR_FEATURES, rr_features
from ecgmamba.selective_scan import pick_backend, selective_scan_fn


@dataclass
class ModelConfig:
    num_leads: int = 12
    num_classes: int = 26
    num_samples: int = 8192          # the training window (shortest input); a learned position embedding's length
    d_model: int = 384
    depth: int = 24
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    stem_channels: int = 128
    # Conv stem (kernel, stride, padding) per layer: the paper's 12x8192 -> 729 tokens.
    stem_kernels: tuple = (14, 15)
    stem_strides: tuple = (3, 4)
    stem_paddings: tuple = (2, 100)
    cls_token: str = "middle"        # "middle" (Vim), "end" (ECG-Mamba-V2) or "none" (pool the tokens instead)
    pooling: str = "mean"            # without a class token: "mean", "mean+max" (half the sum of both), "concat"
                                     # (mean and max side by side: the head weighs each per class) or "stats"
                                     # (mean, max and standard deviation over time side by side)
    divide_out: bool = True          # Vim halves the sum of both directions; ECG-Mamba-V2 does not
    drop_path: float = 0.1
    dropout: float = 0.0             # on the pooled feature, before the head
    mask_padding: bool = True        # pooled tokens: only those centred on real signal, not on zero padding
    position: str = "learned"        # "learned" (sized for num_samples, stretched to other lengths) or "none"
    stem_blocks: int = 0             # residual conv blocks (kernel 7) after the stem's first layer, for beat shape
    head_hidden: int = 0             # 0: a linear head; n: one hidden layer of n units (GELU) between pool and classes
    rhythm_head: bool = False        # a second linear head on the pooled feature, predicting the input's RR-interval
                                     # variability (beats.py): a training target only (train.py's rhythm_target)
    rr_features: bool = False        # add to each token the RR interval it lies in, read from the input by
                                     # beats.rr_features' QRS detector (needs sampling_rate)
    sampling_rate: int = 0           # the input's rate in Hz (training sets it); 0: not recorded

    def to_dict(self):
        d = asdict(self)
        for key in ("stem_kernels", "stem_strides", "stem_paddings"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        d = dict(d)
        for key in ("stem_kernels", "stem_strides", "stem_paddings"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


# Presets. `paper`: the published architecture (Vim-small width and depth, 500 Hz, 8192 samples, middle class token).
# `small`: trains on 2 CPU cores in minutes (250 Hz; the 2048-sample window, 8.2 s, is its shortest input; it reads
# whole records). Instead of a class token it pools the tokens three ways side by side, the mean, the maximum and
# the standard deviation over time ("stats"), and the head weighs each per class: the maximum keeps a single
# abnormal beat that a mean dilutes, the spread says how much a feature varies through the record. On the hard
# benchmark (8 epochs) rhythm-class AUPRC on 12 leads was 0.729 with "stats", 0.695 with mean and max side by
# side, 0.645 with half their sum, 0.351 with the mean (demo, 6 epochs: the class token reached 0.82 macro AUROC).
# It has no position embedding: trained on crops of varying length and read whole, a learned embedding stretched
# to each length cost 0.04 rhythm-class AUPRC (0.607 against 0.645; bench/RESULTS.md). Each token also reads the RR
# interval it lies in (rr_features): at the two training seeds that fell short of the sinus-arrhythmia goal,
# SA AUPRC went from 0.813 and 0.867 to 0.991 and 0.983 (12 leads, bench/RESULTS.md).
# `large`: `paper`'s width and depth with `small`'s whole-record design, for GPUs (500 Hz, 4096-sample shortest
# input, "stats" pooling, no position embedding, RR-interval input); its GPU figures are still to be taken
# (bench/RESULTS.md).
PRESETS = {
    "paper": dict(num_samples=8192, d_model=384, depth=24, stem_channels=128,
                  stem_kernels=(14, 15), stem_strides=(3, 4), stem_paddings=(2, 100)),
    "small": dict(num_samples=2048, d_model=128, depth=4, stem_channels=64,
                  stem_kernels=(14, 15), stem_strides=(3, 4), stem_paddings=(2, 7), drop_path=0.05,
                  cls_token="none", pooling="stats", position="none", rr_features=True),
    "large": dict(num_samples=4096, d_model=384, depth=24, stem_channels=128,
                  stem_kernels=(14, 15), stem_strides=(3, 4), stem_paddings=(2, 7),
                  cls_token="none", pooling="stats", position="none", rr_features=True),
}
POOLING_WIDTH = {"mean": 1, "mean+max": 1, "concat": 2, "stats": 3}  # the head's input, in d_model
PRESET_SAMPLING_RATES = {"paper": 500, "small": 250, "large": 500}


def preset_config(name, **overrides):
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], "sampling_rate": PRESET_SAMPLING_RATES[name], **overrides})


def stem_output_length(config, num_samples=None):
    length = config.num_samples if num_samples is None else num_samples
    for k, s, p in zip(config.stem_kernels, config.stem_strides, config.stem_paddings):
        length = (length + 2 * p - k) // s + 1
    return length


def token_centres(config, num_tokens):
    """Input-sample position (within a window) of each stem output token's receptive-field centre."""
    import numpy as np

    centres = np.arange(num_tokens, dtype=np.float64)
    for k, s, p in reversed(list(zip(config.stem_kernels, config.stem_strides, config.stem_paddings))):
        centres = centres * s - p + (k - 1) / 2
    return centres


def _load_causal_conv1d():
    try:
        from causal_conv1d import causal_conv1d_fn
    except (ImportError, OSError, RuntimeError):
        return None
    return causal_conv1d_fn


_causal_conv1d_fn = None
_causal_conv1d_checked = False


def causal_conv1d_silu(x, weight, bias):
    """Depthwise causal conv over time then SiLU; x (B, D, L), weight (D, 1, K)."""
    global _causal_conv1d_fn, _causal_conv1d_checked
    if x.is_cuda:
        if not _causal_conv1d_checked:
            _causal_conv1d_fn, _causal_conv1d_checked = _load_causal_conv1d(), True
        if _causal_conv1d_fn is not None:
            return _causal_conv1d_fn(x, weight.squeeze(1), bias, activation="silu")
    kernel = weight.shape[-1]
    y = F.conv1d(x, weight, bias, padding=kernel - 1, groups=x.shape[1])[..., : x.shape[-1]]
    return F.silu(y)


SCAN_NAMES = {"mamba_ssm": "mamba-ssm CUDA kernel", "cpu_fused": "numba CPU kernel",
              "chunked": "chunked PyTorch scan", "reference": "PyTorch reference loop"}


def backend_report(device):
    """(line, warning or None): which scan and causal-conv implementations run on `device`. The warning names the
    fix when a GPU takes the pure-PyTorch paths, which are several times slower than mamba-ssm's kernels."""
    device = torch.device(device)
    scan = pick_backend(device.type)
    conv = "PyTorch conv1d"
    if device.type == "cuda":
        global _causal_conv1d_fn, _causal_conv1d_checked
        if not _causal_conv1d_checked:
            _causal_conv1d_fn, _causal_conv1d_checked = _load_causal_conv1d(), True
        conv = "causal-conv1d CUDA kernel" if _causal_conv1d_fn is not None else conv
    line = f"Backends on {device}: selective scan: {SCAN_NAMES[scan]}; causal conv: {conv}"
    warning = None
    if device.type == "cuda" and (scan != "mamba_ssm" or _causal_conv1d_fn is None):
        warning = ("WARNING: mamba-ssm and/or causal-conv1d CUDA kernels are not available, so this GPU runs the "
                   "pure-PyTorch paths (exact, bounded memory, but slow: the paper preset trained 7.2 windows/s on "
                   "an H200 this way, about 3 hours per epoch of the public data, against 145 windows/s and 9 "
                   "minutes with the kernels). Fix: "
                   "pip install -r requirements-cuda.txt (builds mamba-ssm and causal-conv1d), or use the Docker "
                   "image (see README, 'Docker').")
    return line, warning


_reported = set()


def report_backends(device, log=None, once=True):
    """Print backend_report(device) to stderr, by default once per process and device."""
    import sys

    key = str(torch.device(device))
    if once and key in _reported:
        return
    _reported.add(key)
    log = log or (lambda message: print(message, file=sys.stderr))
    line, warning = backend_report(device)
    log(line)
    if warning:
        log(warning)


def _at_least_fp32(t):
    """SSM parameters enter the scan in float32 (as in Mamba) even under bf16 autocast; float64 stays float64."""
    return t if t.dtype == torch.float64 else t.float()


def reversal_index(lengths, length):
    """(B, L) indices that reverse each row's first lengths[b] tokens and leave the padding after them in place.
    The backward scan then reads a record's own tokens first and the padding last, so padding reaches no real token
    in either direction, and a short record gets the same answer however much it was padded. Its own inverse."""
    steps = torch.arange(length, device=lengths.device)
    lengths = lengths[:, None]
    return torch.where(steps < lengths, lengths - 1 - steps, steps)


def _channels_by_time(weight, tokens):
    """weight (C, F) applied to tokens (B, L, F) -> (B, C, L), as a (C, F) x (F, B*L) product viewed as (B, C, L).

    The view's time axis has stride 1, which is what mamba-ssm's scan and causal-conv1d read without copying
    (mamba-ssm's own block computes its projections this way). `linear(tokens).transpose(1, 2)` gives the same
    numbers with channels at stride 1, and the scan's interface then copies u, delta and z into a new layout, and
    the gradients back, in every block. An H200 profile of a `paper` step with that layout spent a fifth of the
    step in PyTorch's same-dtype elementwise (copy) kernels (bench/RESULTS.md)."""
    batch, length, features = tokens.shape
    return (weight @ tokens.reshape(batch * length, features).t()).view(-1, batch, length).transpose(0, 1)


class BiMamba(nn.Module):
    """Vim's bidirectional Mamba mixer ("bimamba v2"): one in_proj, two SSM branches, one out_proj."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank=None, divide_out=True,
                 dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.divide_out = divide_out
        d_inner = self.d_inner

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        for suffix in ("", "_b"):
            conv = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=True)
            x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
            dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
            # dt initialised log-uniform in [dt_min, dt_max]; the bias holds softplus^-1(dt) (as in Mamba).
            nn.init.uniform_(dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
            dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_init_floor)
            with torch.no_grad():
                dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            dt_proj.bias._no_reinit = True
            A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
            A_log = nn.Parameter(torch.log(A))
            A_log._no_weight_decay = True
            D = nn.Parameter(torch.ones(d_inner))
            D._no_weight_decay = True
            setattr(self, "conv1d" + suffix, conv)
            setattr(self, "x_proj" + suffix, x_proj)
            setattr(self, "dt_proj" + suffix, dt_proj)
            # Vim names the backward decay "A_b_log" (not "A_log_b"); keep its names so checkpoints map 1:1.
            setattr(self, "A_b_log" if suffix else "A_log", A_log)
            setattr(self, "D" + suffix, D)

    def branch(self, x, z, direction):
        """One selective-SSM branch on (B, D, L) inputs; direction "forward" or "backward" picks the weights."""
        suffix = "" if direction == "forward" else "_b"
        conv = getattr(self, "conv1d" + suffix)
        x_proj = getattr(self, "x_proj" + suffix)
        dt_proj = getattr(self, "dt_proj" + suffix)
        A_log = self.A_log if direction == "forward" else self.A_b_log
        D = getattr(self, "D" + suffix)

        batch, _, length = x.shape
        x = causal_conv1d_silu(x, conv.weight, conv.bias)
        x_dbl = x_proj(x.transpose(1, 2))                              # (B, L, dt_rank + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = _channels_by_time(dt_proj.weight, dt)                  # (B, D, L); bias goes in the scan
        A = -torch.exp(_at_least_fp32(A_log))
        return selective_scan_fn(
            x, delta, A, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(), _at_least_fp32(D),
            z=z, delta_bias=_at_least_fp32(dt_proj.bias), delta_softplus=True,
        )

    def forward(self, hidden_states, lengths=None):
        """hidden_states (B, L, d_model) -> (B, L, d_model). lengths (B,): how many leading tokens of each row are
        the record's (the rest stand on zero padding); None: all."""
        xz = _channels_by_time(self.in_proj.weight, hidden_states)     # (B, 2*D, L)
        x, z = xz.chunk(2, dim=1)
        out = self.branch(x, z, "forward")
        if lengths is None:
            out_b = self.branch(x.flip(-1), z.flip(-1), "backward").flip(-1)
        else:
            index = reversal_index(lengths, x.shape[-1])[:, None, :].expand_as(x)
            out_b = self.branch(x.gather(-1, index), z.gather(-1, index), "backward").gather(-1, index)
        y = out + out_b
        if self.divide_out:
            y = y / 2
        return self.out_proj(y.transpose(1, 2))


class ResidualConvBlock(nn.Module):
    """Two same-length convolutions (kernel 7) with BatchNorm and a skip: local waveform features (P-wave and QRS
    shape) at the stem's intermediate rate, before the tokens. Lengths and token times are unchanged."""

    def __init__(self, channels, kernel=7):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm1d(channels)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample during training."""

    def __init__(self, p=0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype)
        return x * keep.bernoulli_(1 - self.p) / (1 - self.p)


class Block(nn.Module):
    """Pre-norm residual block; returns (mixer output, residual) like Vim, residual kept in float32."""

    def __init__(self, config, drop_path):
        super().__init__()
        self.norm = nn.RMSNorm(config.d_model, eps=1e-5)
        self.mixer = BiMamba(config.d_model, config.d_state, config.d_conv, config.expand,
                             divide_out=config.divide_out)
        self.drop_path = DropPath(drop_path)

    def forward(self, hidden_states, residual=None, lengths=None):
        residual = hidden_states if residual is None else residual + self.drop_path(hidden_states)
        residual = residual.float()
        hidden_states = self.norm(residual.to(self.norm.weight.dtype))
        return self.mixer(hidden_states, lengths), residual


class ECGMamba(nn.Module):
    # Training only: keep each block's input and recompute the block in the backward pass. The `paper` preset keeps
    # about 0.95 GiB of activations per 8192-sample window for backward (30.7 GiB at batch 32, measured on an
    # H200), more than a 16 GB T4 holds; with this on it keeps a few percent of that for one more forward pass of
    # the blocks. Same weights, same outputs; set by training (train.activation_checkpointing), never saved.
    activation_checkpointing = False

    def __init__(self, config):
        super().__init__()
        self.config = config
        c = config
        stem, in_ch = [], c.num_leads
        out_chs = [c.stem_channels] * (len(c.stem_kernels) - 1) + [c.d_model]
        for layer, (out_ch, k, s, p) in enumerate(zip(out_chs, c.stem_kernels, c.stem_strides, c.stem_paddings)):
            stem += [nn.Conv1d(in_ch, out_ch, k, stride=s, padding=p, bias=False), nn.BatchNorm1d(out_ch), nn.ReLU()]
            if layer == 0:
                stem += [ResidualConvBlock(out_ch) for _ in range(c.stem_blocks)]
            in_ch = out_ch
        self.stem = nn.Sequential(*stem)
        self.num_tokens = stem_output_length(c)
        if self.num_tokens < 1:
            raise ValueError(f"window of {c.num_samples} samples is too short for the stem")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.d_model)) if c.cls_token != "none" else None
        if c.cls_token not in ("middle", "end", "none"):
            raise ValueError(f"cls_token must be 'middle', 'end' or 'none', not {c.cls_token!r}")
        if c.pooling not in POOLING_WIDTH:
            raise ValueError(f"pooling must be one of {sorted(POOLING_WIDTH)}, not {c.pooling!r}")
        if c.position not in ("learned", "none"):
            raise ValueError(f"position must be 'learned' or 'none', not {c.position!r}")
        extra = 0 if self.cls_token is None else 1
        self.pos_embed = (nn.Parameter(torch.zeros(1, self.num_tokens + extra, c.d_model))
                          if c.position == "learned" else None)
        rates = torch.linspace(0, c.drop_path, c.depth).tolist()
        self.layers = nn.ModuleList(Block(c, rate) for rate in rates)
        self.norm_f = nn.RMSNorm(c.d_model, eps=1e-5)
        self.dropout = nn.Dropout(c.dropout)
        self.pooled_parts = POOLING_WIDTH[c.pooling] if self.cls_token is None else 1  # features side by side
        width = self.pooled_parts * c.d_model
        self.head = (nn.Linear(width, c.num_classes) if c.head_hidden == 0 else
                     nn.Sequential(nn.Linear(width, c.head_hidden), nn.GELU(), nn.Linear(c.head_hidden, c.num_classes)))
        self.rhythm_head = nn.Linear(width, 1) if c.rhythm_head else None
        if c.rr_features and c.sampling_rate <= 0:
            raise ValueError("rr_features needs the input's sampling_rate (Hz) to find the beats")
        self.rr_proj = nn.Linear(RR_FEATURES, c.d_model) if c.rr_features else None
        self._init_weights()
        if self.rhythm_head is not None:  # start near a sinus rhythm's log variability (beats.py), not at 0
            nn.init.constant_(self.rhythm_head.bias, -3.5)

    def _init_weights(self):
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear) and not getattr(module.bias, "_no_reinit", False):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv1d) and module.groups == 1:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # Rescale each residual branch's last projection by 1/sqrt(depth) (GPT-2 / Mamba practice).
        for layer in self.layers:
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                layer.mixer.out_proj.weight /= math.sqrt(self.config.depth)

    def token_position(self, num_tokens):
        if self.cls_token is None:
            return None
        return num_tokens // 2 if self.config.cls_token == "middle" else num_tokens

    def pos_embed_for(self, length):
        """Position embedding for `length` tokens, stretched linearly from the window it was sized for to any other
        length (a whole record); zero with position "none", where the stem's strided convolutions and the two scan
        directions are all that carries order."""
        if self.pos_embed is None:
            return 0.0
        if length == self.pos_embed.shape[1]:
            return self.pos_embed
        return F.interpolate(self.pos_embed.transpose(1, 2), size=length, mode="linear",
                             align_corners=False).transpose(1, 2)

    def valid_tokens(self, valid_samples, num_tokens, device):
        """(B, L) bool: the tokens centred on signal rather than on zero padding (a prefix of each row; at least
        the first token, for a record shorter than one token's reach). None when nothing is masked: no
        valid_samples, mask_padding off, or a class-token model (which reads fixed windows)."""
        if valid_samples is None or not self.config.mask_padding or self.cls_token is not None:
            return None
        centres = torch.as_tensor(token_centres(self.config, num_tokens), dtype=torch.float32, device=device)
        valid = centres[None, :] < torch.as_tensor(valid_samples, device=device)[:, None].to(centres.dtype)
        valid[:, 0] |= ~valid.any(dim=1)
        return valid

    def token_features(self, signal, valid_samples=None):
        """(final-norm features of every token (B, L, d_model), class-token position or None): what the pooling
        reads, kept per token so the head can be applied to each (ecgmamba.explain). valid_samples (B,) as in
        forward: the backward scan reads each row's own tokens before its padding (reversal_index)."""
        tokens = self.stem(signal).transpose(1, 2)                      # (B, L, d_model)
        batch, length, _ = tokens.shape
        if self.rr_proj is not None:  # each token also reads the RR interval at its centre
            rr = rr_features(signal, self.config.sampling_rate, valid_samples)       # (B, RR_FEATURES, n)
            centres = torch.as_tensor(token_centres(self.config, length), device=signal.device)
            at = centres.round().long().clamp(0, signal.shape[-1] - 1)
            tokens = tokens + self.rr_proj(rr[:, :, at].transpose(1, 2).to(self.rr_proj.weight.dtype)).to(tokens.dtype)
        position = self.token_position(length)
        if position is not None:
            cls = self.cls_token.expand(batch, -1, -1).to(tokens.dtype)
            tokens = torch.cat([tokens[:, :position], cls, tokens[:, position:]], dim=1)
        valid = self.valid_tokens(valid_samples, length, tokens.device)
        lengths = None if valid is None or bool(valid.all()) else valid.sum(dim=1)
        hidden_states = tokens + self.pos_embed_for(tokens.shape[1])
        residual = None
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:  # the RNG state is replayed, so drop-path draws the same paths again
                hidden_states, residual = checkpoint(layer, hidden_states, residual, lengths, use_reentrant=False)
            else:
                hidden_states, residual = layer(hidden_states, residual, lengths)
        residual = residual + layer.drop_path(hidden_states)
        return self.norm_f(residual.to(self.norm_f.weight.dtype)), position

    def forward_features(self, signal, valid_samples=None):
        hidden_states, position = self.token_features(signal, valid_samples)
        if position is not None:
            return hidden_states[:, position]
        valid = self.valid_tokens(valid_samples, hidden_states.shape[1], signal.device)
        if valid is None:
            weights = torch.ones_like(hidden_states[..., :1])
            mean, peak = hidden_states.mean(dim=1), hidden_states.amax(dim=1)
        else:  # a record shorter than the window: pool the tokens centred on its signal, not on the padding
            weights = valid.to(hidden_states.dtype)[..., None]
            mean = (hidden_states * weights).sum(dim=1) / weights.sum(dim=1)
            peak = hidden_states.masked_fill(~valid[..., None], float("-inf")).amax(dim=1)
        if self.config.pooling == "mean+max":
            return 0.5 * (mean + peak)
        if self.config.pooling == "concat":
            return torch.cat([mean, peak], dim=-1)
        if self.config.pooling == "stats":  # the spread of a feature over time: how much a rhythm varies
            variance = (((hidden_states - mean[:, None]) ** 2) * weights).sum(dim=1) / weights.sum(dim=1)
            return torch.cat([mean, peak, torch.sqrt(variance + 1e-6)], dim=-1)
        return mean

    def token_logits(self, features):
        """The head applied to each token's feature (B, L, d_model) -> (B, L, classes): where in time the evidence
        for each class is. With "concat" or "stats" pooling a token is scored as if it were both the mean and the
        maximum, with no spread (the spread belongs to the record, not to a moment in it)."""
        if self.pooled_parts == 1:
            return self.head(features)
        spread = [torch.zeros_like(features)] * (self.pooled_parts - 2)
        return self.head(torch.cat([features, features] + spread, dim=-1))

    def forward(self, signal, valid_samples=None, with_rhythm=False):
        """signal (B, num_leads, samples) -> logits (B, num_classes). valid_samples (B,): how many leading samples
        of each row are signal (the rest zero padding); None: all. with_rhythm (a model with rhythm_head):
        (logits, predicted log RR variability (B,)), for training's auxiliary target."""
        if signal.dim() != 3 or signal.shape[1] != self.config.num_leads:
            raise ValueError(f"expected input (batch, {self.config.num_leads}, samples), got {tuple(signal.shape)}")
        pooled = self.dropout(self.forward_features(signal, valid_samples))
        if not with_rhythm:
            return self.head(pooled)
        if self.rhythm_head is None:
            raise ValueError("with_rhythm needs a model built with rhythm_head=True")
        return self.head(pooled), self.rhythm_head(pooled).squeeze(-1)


class AveragedNetworks(nn.Module):
    """Networks of one configuration trained apart (TrainConfig.ensemble), read as one. Two runs of one recipe
    differ by several AUPRC points on the hard benchmark's rhythm classes, and the average of their probabilities
    scores at least their mean (bench/RESULTS.md). The forward pass returns the logit of the members' mean
    probability, so whatever reads a network's logits (sigmoid, thresholds, chunk aggregation) reads this one
    unchanged; it is computed from log-sigmoids, exact where a member's logit is large."""

    def __init__(self, members):
        super().__init__()
        members = list(members)
        if not members or any(m.config != members[0].config for m in members):
            raise ValueError("an ensemble needs one or more networks of one configuration")
        self.members = nn.ModuleList(members)
        self.config = members[0].config

    def forward(self, signal, valid_samples=None):
        logits = torch.stack([member(signal, valid_samples).float() for member in self.members])
        count = math.log(len(self.members))
        log_mean = torch.logsumexp(F.logsigmoid(logits), dim=0) - count          # log of the mean probability
        log_mean_not = torch.logsumexp(F.logsigmoid(-logits), dim=0) - count     # log of one minus it
        return log_mean - log_mean_not


def network_for(config, members=1):
    """An untrained network of `config`: one ECGMamba, or an AveragedNetworks of `members` of them."""
    return ECGMamba(config) if members == 1 else AveragedNetworks(ECGMamba(config) for _ in range(members))


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def count_flops(config, num_samples=None):
    """Forward FLOPs for one record: dense ops counted by torch's FlopCounterMode, plus the selective scan
    (about 9 FLOPs per (channel, state, step) per direction: exp, two multiply-adds and the C contraction)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = ECGMamba(config).eval()
    x = torch.zeros(1, config.num_leads, num_samples or config.num_samples)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    tokens = model.num_tokens + (0 if model.cls_token is None else 1)
    d_inner = config.expand * config.d_model
    scan = 2 * config.depth * 9 * d_inner * config.d_state * tokens
    return counter.get_total_flops() + scan
