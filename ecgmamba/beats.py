"""Beat times and RR intervals read from a preprocessed signal: an auxiliary training target (numpy, per crop) and
the network's RR-interval input (torch, batched, in the forward pass).

Sinus arrhythmia is a rhythm measurement (the RR interval swinging with breathing by more than normal heart-rate
variability), yet the labels only say yes or no. On the hard benchmark the networks order the modulation's depth
almost perfectly within one patient but their SA score's level drifts between patients with the heart rate
(bench/RESULTS.md), which a yes/no label cannot correct. A continuous target, the crop's own RR variability, asks
the pooled feature to carry that measurement at every rate (train.py's `rhythm_target`). The input goes further:
each token is told the RR interval it lies in, relative to the record's median (model.py's `rr_features`), so the
recurrence reads the rhythm's swing directly instead of inferring beat times from the waveform.

The detector needs no labels and no beat annotations, so it serves the public data as well as the synthetic: the
QRS complexes are where the summed squared slope of the present leads peaks. It is meant to be robust on
average, not exact: the variability is a median-based spread, so a missed beat, a T wave taken for a beat or a
premature beat and its pause move a few intervals and barely the target.
"""

import numpy as np
import scipy.signal
import torch
import torch.nn.functional as F

MIN_RR_SECONDS = 0.25    # 240 bpm: two peaks closer than this are one beat
SMOOTH_SECONDS = 0.08    # about a QRS complex's width: its slope energy becomes one hump
PEAK_FRACTION = 0.3      # a beat's energy at least this fraction of the crop's strong beats'
MIN_INTERVALS = 4        # fewer RR intervals than this: no target (NaN)
FLOOR = 0.002            # the variability's floor before the log: a perfectly regular rhythm is not -inf


def detect_beats(crop, fs):
    """Sample positions of the QRS complexes in `crop` (leads, n), band-passed as preprocess.py leaves it."""
    crop = np.asarray(crop, dtype=np.float32)
    if crop.ndim != 2 or crop.shape[1] < 3:
        return np.zeros(0, dtype=np.int64)
    energy = np.square(np.diff(crop, axis=1)).sum(axis=0)
    width = max(1, int(round(SMOOTH_SECONDS * fs)))
    energy = np.convolve(energy, np.ones(width, dtype=np.float32) / width, mode="same")
    # Every hump at least MIN_RR apart is a candidate (QRS complexes, T waves, noise); the beats are those near the
    # level of the strong ones, a high percentile of the candidates' heights rather than their maximum, so that a
    # premature beat of eight times the energy or one artefact does not hide the others.
    candidates, properties = scipy.signal.find_peaks(energy, height=0.0, distance=max(1, int(MIN_RR_SECONDS * fs)))
    if len(candidates) == 0:
        return np.zeros(0, dtype=np.int64)
    level = float(np.percentile(properties["peak_heights"], 90))
    return candidates[properties["peak_heights"] >= PEAK_FRACTION * level].astype(np.int64)


def rr_variability(beats):
    """The RR intervals' spread relative to their median (1.4826 x median absolute deviation / median: the
    coefficient of variation for normally spread intervals, robust to a few wrong ones); NaN with fewer than
    MIN_INTERVALS intervals."""
    rr = np.diff(np.asarray(beats, dtype=np.float64))
    if len(rr) < MIN_INTERVALS:
        return float("nan")
    median = float(np.median(rr))
    return 1.4826 * float(np.median(np.abs(rr - median))) / median


def rhythm_target(crop, fs):
    """log(RR variability + FLOOR) of `crop` (leads, n), the value train.py regresses; NaN where too short."""
    return float(np.log(rr_variability(detect_beats(crop, fs)) + FLOOR))


RR_FEATURES = 3          # per sample: log(RR / record's median RR), log(RR / 1 s), inside a measured interval (1/0)
RR_CLAMP = 1.5           # the log ratios are clipped to +-this (a missed beat or a long pause is not an outlier)


def _signal_mask(valid_samples, batch, n, device):
    """(B, n) bool: True on signal, False on the zero padding from valid_samples (B,) on; all True for None."""
    if valid_samples is None:
        return torch.ones(batch, n, dtype=torch.bool, device=device)
    return torch.arange(n, device=device)[None, :] < torch.as_tensor(valid_samples, device=device).reshape(-1, 1)


@torch.no_grad()
def beat_mask(signal, fs, valid_samples=None):
    """detect_beats in torch, batched and on the signal's device (no host round trip in a forward pass), with the
    same constants: (B, n) bool, True at the beats of signal (B, leads, n); samples from valid_samples on are
    padding. Absent leads are zero and add no slope. A beat is a hump of the smoothed slope energy that is the
    highest within MIN_RR_SECONDS either side and at least PEAK_FRACTION of the 90th percentile of such humps."""
    x = signal.float()
    batch, _, n = x.shape
    valid = _signal_mask(valid_samples, batch, n, x.device)
    energy = torch.zeros(batch, n, device=x.device)
    if n > 1:  # the step from the last sample onto zero padding is not a slope
        energy[:, 1:] = torch.diff(x, dim=-1).square().sum(dim=1) * valid[:, 1:]
    width = max(1, int(round(SMOOTH_SECONDS * fs))) | 1  # odd, so the smoothing keeps the length and the centre
    energy = F.avg_pool1d(energy[:, None], width, stride=1, padding=width // 2, count_include_pad=True)[:, 0]
    reach = max(1, int(MIN_RR_SECONDS * fs))
    local_max = F.max_pool1d(energy[:, None], 2 * reach + 1, stride=1, padding=reach)[:, 0]
    candidate = (energy >= local_max) & (energy > 0) & valid
    heights = torch.where(candidate, energy, torch.full_like(energy, float("nan")))
    level = torch.nanquantile(heights, 0.9, dim=1, keepdim=True).nan_to_num(float("inf"))
    return candidate & (energy >= PEAK_FRACTION * level)


@torch.no_grad()
def rr_features(signal, fs, valid_samples=None):
    """The RR interval each sample lies in, for the network to read beside the waveform: (B, RR_FEATURES, n) from
    signal (B, leads, n), float32. A sample between two beats (beat_mask) gets that interval; samples before the
    first beat, after the last, and on padding get zeros and flag 0. The ratio to the record's median interval is
    what sinus arrhythmia and a premature beat are defined by, at any heart rate."""
    beat = beat_mask(signal, fs, valid_samples)
    batch, n = beat.shape
    steps = torch.arange(n, device=beat.device)
    valid = _signal_mask(valid_samples, batch, n, beat.device)
    # The beats at or before each sample and after it: running max / min of the beat positions.
    last = torch.where(beat, steps, torch.full_like(steps, -1)).cummax(dim=1).values
    following = torch.where(beat, steps, torch.full_like(steps, n)).flip(1).cummin(dim=1).values.flip(1)
    after = torch.cat([following[:, 1:], torch.full_like(following[:, :1], n)], dim=1)  # strictly after
    inside = (last >= 0) & (after < n) & valid
    rr = (after - last).clamp(min=1).float() / fs                           # seconds
    at_beats = torch.where(beat & inside, rr, torch.full_like(rr, float("nan")))   # one value per interval
    median = torch.nanquantile(at_beats, 0.5, dim=1, keepdim=True).nan_to_num(1.0)
    features = torch.stack([(rr / median).log().clamp(-RR_CLAMP, RR_CLAMP),
                            rr.log().clamp(-RR_CLAMP, RR_CLAMP),
                            torch.ones_like(rr)], dim=1)
    return features * inside[:, None]
