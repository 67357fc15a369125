"""Signal preprocessing shared by training and inference, so the model always sees the same kind of input.

A recording arrives in physical units (mV) at whatever rate its source database used (257, 360, 500, 1000 Hz, ...)
and leaves as float32 at the model's rate, band-passed and robustly scaled per lead, ready for windowing.
Every knob that changes the output lives in PreprocessConfig, which is saved in the model's JSON config so that
inference reproduces training exactly.
"""

import dataclasses
import functools
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import scipy.signal

# Sampling rates are compared as fractions; odd rates (e.g. 256.7 Hz) are approximated to this denominator so the
# polyphase filter of resample_poly stays small. Exact for every integer rate up to this value.
MAX_RATE_DENOMINATOR = 1000

# Leads are preprocessed together up to this many samples (float64, 16 MiB per copy), one at a time beyond it.
CHUNK_SAMPLES = 2**21

INFERENCE_MODES = ("whole", "windows")
AGGREGATIONS = ("mean", "max", "noisy_or", "logit_mean")
SIGNAL_FIELDS = ("target_fs", "low_cut_hz", "high_cut_hz", "filter_order", "scaling", "clip", "min_scale_mv")

# MAD of a Gaussian times this constant is its standard deviation; it makes the scale read like a standard deviation.
MAD_TO_STD = 1.4826


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything that determines what preprocess_recording produces, plus the window length the model trains on.

    target_fs: model sampling rate (Hz). 500 Hz is the rate of most Challenge sources; 250 Hz halves compute and
        still holds everything below the 40 Hz cut.
    low_cut_hz, high_cut_hz: Butterworth band-pass edges. 0.5 Hz removes baseline wander (respiration, electrode
        drift) while keeping ST segments; 40 Hz (rather than 45) sits far enough below 50 Hz mains that the CPSC,
        PTB and INCART (50 Hz countries) hum is cut by 18 dB, 60 Hz by 31 dB, and EMG noise is reduced, while QRS
        energy (mostly 5-30 Hz) is kept. Every source's Nyquist (128.5 Hz for INCART at 257 Hz) is far above it.
    filter_order: Butterworth order of each edge; applied forward and backward (sosfiltfilt), so the magnitude
        response is squared and there is no phase distortion of QRS/ST morphology.
    scaling: how amplitudes are normalised after median centring. "lead": each lead divided by its own robust
        standard deviation (1.4826 * MAD), which equalises gain differences between sources but hides absolute
        and between-lead amplitude; "record": all leads divided by the median of their robust standard deviations,
        which keeps between-lead ratios (electrical axis, LAD/RAD); "none": left in mV, which keeps absolute
        voltage (low QRS voltage). MAD, not the standard deviation, so one huge spike cannot shrink a lead.
        Default "none": the Challenge scores low QRS voltage and axis deviation, which per-lead scaling hides; on
        the synthetic data, after the same 6 epochs, the held-out macro AUROC / Challenge metric was 0.961 / 0.796
        with "none", 0.950 / 0.746 with "lead" and 0.952 / 0.762 with "record" (12 leads; bench/RESULTS.md).
        Robustness to spikes and saturation comes from the outlier clipping before filtering and the clip after it.
    clip: after scaling, samples are clipped to +-clip (robust standard deviations, or mV for "none") so an
        electrode pop or a saturated lead cannot dominate a batch; the raw lead is clipped to +-clip of its own robust
        standard deviation before filtering too (clip_outliers). On the 50 sample records R peaks reach a median
        of 17 and a 95th percentile of 37 robust standard deviations per lead; 50 clips 2 % of leads, barely.
    min_scale_mv: floor of the robust scale, so a flat lead stays zero and a near-flat one is not blown up into
        pure noise; 10 uV is about the noise level of clinical ECG amplifiers (1 % of real sample leads lie below).
    window_samples: the shortest input the model is given: a shorter record is zero-padded to it (the padding masked
        out of the pooling), and `inference: "windows"` reads windows of exactly this length.
    inference: how a record is read. "whole": in one pass, up to max_whole_seconds; a longer record in equal
        chunks of at most that length (at most max_windows of them, evenly spread), aggregated. A rhythm finding
        (one early beat, sinus arrhythmia over several breaths) is defined over the whole record, and the
        selective scan's cost is linear in length, so nothing is gained by cutting it. "windows": windows of
        window_samples overlapping by window_overlap (at most max_windows), aggregated; the earlier behaviour.
    max_whole_seconds: the longest stretch read in one pass; bounds memory (the activations grow with length).
    window_overlap: fraction of overlap between consecutive inference windows ("windows" only).
    max_windows: windows or chunks per record at most, so a 30-minute Holter record costs a bounded time.
    aggregation: how the windows' or chunks' outputs become one probability: "max" of the probabilities, their
        "mean", "noisy_or" (1 - prod(1 - p)) or "logit_mean" (the sigmoid of the mean logit). "max": a finding
        present in one chunk (an early beat) is present in the record; on the hard benchmark, reading records in
        10 s chunks, it kept the whole reading's rhythm-class AUPRC (0.624 against 0.626 on 12 leads, 0.621 against
        0.621 on 2) where the mean lost 0.02-0.04, noisy-or 0.03 and the logit mean 0.04-0.06.
    """

    target_fs: int = 500
    low_cut_hz: float = 0.5
    high_cut_hz: float = 40.0
    filter_order: int = 4
    scaling: str = "none"
    clip: float = 50.0
    min_scale_mv: float = 0.01
    window_samples: int = 4096
    inference: str = "whole"
    max_whole_seconds: float = 60.0
    window_overlap: float = 0.5
    max_windows: int = 32
    aggregation: str = "max"

    def __post_init__(self):
        if not (isinstance(self.target_fs, (int, np.integer)) and self.target_fs > 0):
            raise ValueError(f"PreprocessConfig: target_fs must be a positive integer, got {self.target_fs!r}")
        if not 0 < self.low_cut_hz < self.high_cut_hz < self.target_fs / 2:
            raise ValueError(
                f"PreprocessConfig: need 0 < low_cut_hz < high_cut_hz < target_fs/2, got "
                f"{self.low_cut_hz}, {self.high_cut_hz}, target_fs={self.target_fs}"
            )
        if not (isinstance(self.filter_order, (int, np.integer)) and self.filter_order >= 1):
            raise ValueError(f"PreprocessConfig: filter_order must be a positive integer, got {self.filter_order!r}")
        if self.scaling not in ("lead", "record", "none"):
            raise ValueError(f"PreprocessConfig: scaling must be 'lead', 'record' or 'none', got {self.scaling!r}")
        if not self.clip > 0:
            raise ValueError(f"PreprocessConfig: clip must be positive, got {self.clip!r}")
        if not self.min_scale_mv > 0:
            raise ValueError(f"PreprocessConfig: min_scale_mv must be positive, got {self.min_scale_mv!r}")
        if not (isinstance(self.window_samples, (int, np.integer)) and self.window_samples >= 1):
            raise ValueError(
                f"PreprocessConfig: window_samples must be a positive integer, got {self.window_samples!r}"
            )
        if not 0 <= self.window_overlap < 1:
            raise ValueError(f"PreprocessConfig: window_overlap must be in [0, 1), got {self.window_overlap!r}")
        if not (isinstance(self.max_windows, (int, np.integer)) and self.max_windows >= 1):
            raise ValueError(f"PreprocessConfig: max_windows must be a positive integer, got {self.max_windows!r}")
        if self.inference not in INFERENCE_MODES:
            raise ValueError(f"PreprocessConfig: inference must be one of {INFERENCE_MODES}, got {self.inference!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"PreprocessConfig: aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if not self.max_whole_seconds * self.target_fs >= self.window_samples:
            raise ValueError(f"PreprocessConfig: max_whole_seconds ({self.max_whole_seconds}) must hold at least one "
                             f"window of {self.window_samples} samples at {self.target_fs} Hz")

    @property
    def max_whole_samples(self):
        return int(self.max_whole_seconds * self.target_fs)

    def signal_dict(self):
        """The fields that shape the preprocessed signal (not how inference reads it): the cache's fingerprint."""
        return {k: v for k, v in self.to_dict().items() if k in SIGNAL_FIELDS}

    def to_dict(self):
        """Plain JSON-serialisable dict, stored inside the model's config file."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """Inverse of to_dict. Unknown keys are an error (a config from a different code version must not be
        half-understood); missing keys take the defaults."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"PreprocessConfig: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**values)


def resample_factors(fs, target_fs):
    """(up, down) for resample_poly: the rate ratio as a small fraction, e.g. 257 -> 500 Hz is (500, 257)."""
    if not (np.isfinite(fs) and fs > 0):
        raise ValueError(f"sampling rate must be a positive finite number, got {fs!r}")
    ratio = (Fraction(target_fs) / Fraction(float(fs))).limit_denominator(MAX_RATE_DENOMINATOR)
    if ratio == 0:
        raise ValueError(f"cannot resample from {fs} Hz to {target_fs} Hz: ratio too small")
    return ratio.numerator, ratio.denominator


def resampled_length(num_samples, fs, target_fs):
    """Number of samples preprocess_recording returns for a record of num_samples at fs (resample_poly's ceil)."""
    up, down = resample_factors(fs, target_fs)
    return -(-num_samples * up // down)


@functools.lru_cache(maxsize=8)
def bandpass_sos(config):
    """Second-order sections of the Butterworth band-pass at the model rate (SOS keeps the 0.5 Hz edge stable).
    Cached: every record, and every augmented training crop, uses the same few filters."""
    return scipy.signal.butter(
        config.filter_order,
        [config.low_cut_hz, config.high_cut_hz],
        btype="bandpass",
        fs=config.target_fs,
        output="sos",
    )


def fill_non_finite(lead):
    """Replace NaN/inf in one lead (float64, in place) by linear interpolation between the nearest finite samples,
    holding the end values at the edges; a lead with no finite sample becomes zeros.

    Interpolation rather than zeros: a jump to 0 mV in the middle of a lead would ring through the band-pass
    filter and look like a QRS complex.
    """
    finite = np.isfinite(lead)
    if finite.all():
        return lead
    if not finite.any():
        lead[:] = 0.0
        return lead
    good = np.flatnonzero(finite)
    bad = np.flatnonzero(~finite)
    lead[bad] = np.interp(bad, good, lead[good])
    return lead


def clip_outliers(leads, config):
    """Clip raw leads (float64 (k, n), in place) to their median +- config.clip robust standard deviations.

    A linear band-pass smears a huge electrode pop over seconds (the 0.5 Hz high-pass's slow undershoot), so the pop
    must be limited before filtering, not only after. Relative to each lead's own scale rather than in mV, so a
    header with wrong units does not turn the whole lead into a square wave; saturated stretches at an amplifier
    rail are flattened the same way.
    """
    centre = np.median(leads, axis=1, keepdims=True)
    limit = config.clip * np.maximum(robust_std(leads - centre), config.min_scale_mv)[:, None]
    np.clip(leads, centre - limit, centre + limit, out=leads)
    return leads


def robust_std(centred):
    """MAD-based standard deviation of each median-centred lead (k, n) -> (k,).

    MAD rather than the standard deviation: a single electrode pop of hundreds of mV would otherwise shrink the
    whole lead to nothing.
    """
    return MAD_TO_STD * np.median(np.abs(centred), axis=1)


def preprocess_recording(signal_mv, fs, config=PreprocessConfig()):
    """Recording (num_leads, num_samples) in mV at fs Hz -> float32 (num_leads, m) at config.target_fs, band-passed,
    median-centred, scaled (config.scaling) and clipped to +-config.clip. The input array is not modified.
    filter_recording then scale_leads: the training cache keeps the two apart for "record" scaling.

    Steps: non-finite samples interpolated (fill_non_finite), outliers clipped (clip_outliers), polyphase
    resampling, zero-phase band-pass, median centring, scaling. Leads go through in chunks of at most
    CHUNK_SAMPLES samples, so a 30-minute 12-lead record at 1000 Hz is done one lead at a time (~0.1 GB beyond
    its 43 MB output) while a 10 s record is done in one vectorised pass.
    m = ceil(num_samples * up / down) (see resampled_length); 0 samples in gives 0 samples out.
    """
    filtered, lead_scales = filter_recording(signal_mv, fs, config)
    return scale_leads(filtered, lead_scales, config, out=filtered)


def filter_recording(signal_mv, fs, config=PreprocessConfig()):
    """Every step of preprocess_recording before scaling: (float32 (num_leads, m) in mV, each lead's robust
    standard deviation (num_leads,))."""
    signal_mv = np.asarray(signal_mv)
    if signal_mv.ndim != 2:
        raise ValueError(f"preprocess_recording: expected (num_leads, num_samples), got shape {signal_mv.shape}")
    if not (np.issubdtype(signal_mv.dtype, np.floating) or np.issubdtype(signal_mv.dtype, np.integer)):
        raise ValueError(f"preprocess_recording: expected a real numeric array, got dtype {signal_mv.dtype}")
    num_leads, num_samples = signal_mv.shape
    up, down = resample_factors(fs, config.target_fs)
    out_samples = resampled_length(num_samples, fs, config.target_fs)
    out = np.zeros((num_leads, out_samples), dtype=np.float32)
    lead_scales = np.zeros(num_leads)
    if out_samples == 0 or num_leads == 0:
        return out, lead_scales

    sos = bandpass_sos(config)
    # sosfiltfilt extends the signal by padlen samples at each end and needs more samples than that; shorter
    # records (a 1-sample record becomes 2 samples) are filtered with the longest extension they allow.
    default_padlen = 3 * (2 * len(sos) + 1 - min((sos[:, 2] == 0).sum(), (sos[:, 5] == 0).sum()))
    padlen = min(default_padlen, out_samples - 1)

    leads_per_chunk = max(1, CHUNK_SAMPLES // max(num_samples, out_samples))
    for start in range(0, num_leads, leads_per_chunk):
        stop = min(start + leads_per_chunk, num_leads)
        chunk = signal_mv[start:stop].astype(np.float64)  # a copy: the caller's array is never modified
        for lead in chunk:
            fill_non_finite(lead)
        clip_outliers(chunk, config)
        if (up, down) != (1, 1):
            chunk = scipy.signal.resample_poly(chunk, up, down, axis=1)
        chunk = scipy.signal.sosfiltfilt(sos, chunk, axis=1, padlen=padlen)
        chunk -= np.median(chunk, axis=1, keepdims=True)
        lead_scales[start:stop] = robust_std(chunk)
        out[start:stop] = chunk
    return out, lead_scales


def lead_divisors(lead_scales, config, present=None):
    """What each lead is divided by under config.scaling, from the leads' robust standard deviations (num_leads,).
    "record" takes the median over the present leads that are not flat: present (bool (num_leads,)) names the
    leads a reduced-lead record has, so that training, which caches all 12 leads, scales a 2-lead sample by its 2
    leads exactly as inference scales a 2-lead record."""
    lead_scales = np.asarray(lead_scales, dtype=np.float64)
    if config.scaling == "lead":
        return np.maximum(lead_scales, config.min_scale_mv)
    if config.scaling == "record":
        alive = lead_scales > config.min_scale_mv
        if present is not None:
            alive &= np.asarray(present, dtype=bool)
        return np.full(len(lead_scales), np.median(lead_scales[alive]) if alive.any() else config.min_scale_mv)
    return np.ones(len(lead_scales))  # "none": stay in mV


def scale_leads(filtered, lead_scales, config, present=None, out=None):
    """filter_recording's output (num_leads, m) scaled by lead_divisors and clipped to +-config.clip (float32)."""
    divisors = lead_divisors(lead_scales, config, present).astype(np.float32)[:, None]
    out = np.divide(np.asarray(filtered, dtype=np.float32), divisors, out=out)
    return np.clip(out, -config.clip, config.clip, out=out)


def window_starts(num_samples, length, overlap=0.5, max_windows=32):
    """Start indices of inference windows: step length*(1-overlap), the last window ending at the record's end,
    and at most max_windows of them, evenly spaced (first and last kept) so long records stay bounded."""
    if length < 1:
        raise ValueError(f"window length must be positive, got {length}")
    if not 0 <= overlap < 1:
        raise ValueError(f"window overlap must be in [0, 1), got {overlap}")
    if max_windows < 1:
        raise ValueError(f"max_windows must be positive, got {max_windows}")
    if num_samples <= length:
        return np.zeros(1, dtype=np.int64)
    step = max(1, int(round(length * (1 - overlap))))
    last = num_samples - length
    starts = np.arange(0, last, step, dtype=np.int64)
    starts = np.append(starts, last)
    if len(starts) > max_windows:
        starts = np.round(np.linspace(0, last, max_windows)).astype(np.int64)
    return starts


def record_segments(num_samples, config):
    """(starts, length): the stretches of a preprocessed record of num_samples that inference reads, all of one
    length (at most num_samples; a shorter record than config.window_samples is padded to it when batched).

    "whole": the record itself up to config.max_whole_samples; beyond it, k = ceil(n / cap) equal chunks, which
    tile the record without overlap, or config.max_windows chunks of the cap's length evenly spread when more
    would be needed (a 30-minute record at 250 Hz with a 60 s cap: 30 chunks, all of it read).
    "windows": window_starts' windows of config.window_samples."""
    if config.inference == "windows":
        starts = window_starts(num_samples, config.window_samples, config.window_overlap, config.max_windows)
        return starts, min(num_samples, config.window_samples)
    cap = config.max_whole_samples
    if num_samples <= cap:
        return np.zeros(1, dtype=np.int64), num_samples
    chunks = -(-num_samples // cap)
    if chunks <= config.max_windows:
        length = -(-num_samples // chunks)
        return np.round(np.linspace(0, num_samples - length, chunks)).astype(np.int64), length
    return np.round(np.linspace(0, num_samples - cap, config.max_windows)).astype(np.int64), cap


def aggregate(probabilities, logits, method):
    """One probability per class from a record's segments: probabilities and logits (segments, classes)."""
    if method == "mean":
        return probabilities.mean(0)
    if method == "max":
        return probabilities.max(0)
    if method == "noisy_or":
        return 1.0 - np.prod(1.0 - probabilities, axis=0)
    if method == "logit_mean":
        return 1.0 / (1.0 + np.exp(-logits.mean(0)))
    raise ValueError(f"unknown aggregation {method!r}; choose one of {AGGREGATIONS}")
