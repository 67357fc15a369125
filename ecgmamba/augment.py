"""Training augmentation: new noise on the same beats, and time warps that supervise only what they keep.

Sinus arrhythmia, PAC and PVC are read from beat timing, and the network can fit them on its training records
by their waveforms instead (bench/RESULTS.md: training-record AUPRC 1.000, test 0.76 for sinus arrhythmia).
Fresh noise and baseline wander on every presentation change the waveform and leave the timing untouched.
Crops come from the cache already band-passed, so the added noise is band-passed the same way and the wander
kept to what the 0.5 Hz high-pass lets through; noise the model never meets at inference would teach it nothing.
Sizes are relative to the crop's own RMS, so they mean the same under every scaling.

A time warp plays a record faster or slower: a sinus arrhythmia at 70 bpm becomes one at 90 or 55 bpm, with its
breathing-driven RR modulation scaled with it, so the rhythm is shown at rates the training set has few of. It
moves every interval, so rate, PR, QRS and QT labels (sinus tachycardia at 100 bpm, first-degree block at
200 ms, bundle branch blocks at 120 ms, ...) can cross their thresholds, while findings defined by timing
relative to the record's own rhythm keep theirs: a premature beat stays premature, irregularity stays
irregular, and a modulation of 8 % of the RR interval stays 8 %. A warped crop is therefore supervised on
WARP_KEEPS classes only (train.py's loss skips the others, which come back as NaN), and only WARP_SHARE of the
crops are warped, so the other classes still see half of them. One assumption: sinus arrhythmia is sometimes
defined by an absolute PP spread (120 ms), which a warp moves for records near that line. Amplitude scaling
stays out, since it moves QRS voltages across the low-voltage label's 0.5 mV.
"""

import numpy as np
import scipy.signal

from ecgmamba.preprocess import PreprocessConfig, bandpass_sos

WANDER_HZ = (0.3, 1.0)  # below 0.3 Hz the 0.5 Hz high-pass (order 4, both directions) leaves under 2 %
WARP_SHARE = 0.5  # the fraction of crops warped when time_warp is on (TrainConfig.warp_share's default)
# Classes a time warp leaves true or false as they were: AF, atrial flutter, PAC and SVPB, PVC and VPB, sinus
# arrhythmia (their SNOMED CT codes; classes joined with any of them count).
WARP_KEEPS = {"164889003": "AF", "164890007": "AFL", "284470004": "PAC", "63593006": "SVPB",
              "427172004": "PVC", "17338001": "VPB", "427393009": "SA"}
# Classes of single beats, which a crop of part of a record can miss: not supervised on the short crops of
# `min_crop_seconds` (train.py), whose labels would otherwise say "PVC" over a stretch without one.
EPISODIC = {"284470004": "PAC", "63593006": "SVPB", "427172004": "PVC", "17338001": "VPB"}


def augment_crop(crop, rng, preprocess=PreprocessConfig(), noise=0.0, wander=0.0):
    """crop (leads, n) float32 at preprocess.target_fs, plus noise of std up to `noise` x the crop's RMS (white
    noise through the preprocessing's band-pass) and baseline wander up to `wander` x the RMS per lead (two
    sinusoids of WANDER_HZ mixed into the leads in random proportions); each size drawn uniformly per call.
    Absent leads (all zero) stay zero; with both sizes 0 the crop is returned as it is and `rng` is not used."""
    if noise <= 0 and wander <= 0:
        return crop
    present = np.any(crop != 0, axis=1)
    leads, n = crop.shape
    if not present.any() or n < 2:  # a one-sample crop has no spread to size the noise by
        return crop
    rms = float(np.sqrt(np.mean(np.square(crop[present], dtype=np.float64))))
    added = np.zeros((leads, n), dtype=np.float64)
    if noise > 0:
        white = rng.standard_normal((leads, n))
        coloured = scipy.signal.sosfilt(bandpass_sos(preprocess), white, axis=1)
        added += coloured * (rng.uniform(0, noise) * rms / max(float(coloured.std()), 1e-12))
    if wander > 0:
        t = np.arange(n) / preprocess.target_fs
        sources = np.sin(2 * np.pi * rng.uniform(*WANDER_HZ, (2, 1)) * t + rng.uniform(0, 2 * np.pi, (2, 1)))
        added += rng.uniform(-0.5, 0.5, (leads, 2)) * (rng.uniform(0, wander) * rms) @ sources
    return (crop + added * present[:, None]).astype(np.float32)


def _classes_with(table, codes):
    """(C,) bool: the classes of the scoring `table` with any of `codes` (classes joined with one count)."""
    return np.array([any(code in codes for code in joined) for joined in table.classes], dtype=bool)


def warp_keeps(table):
    """(C,) bool: the classes of the scoring `table` still supervised on a time-warped crop (WARP_KEEPS)."""
    return _classes_with(table, WARP_KEEPS)


def episodic_classes(table):
    """(C,) bool: the classes of the scoring `table` that a part of a record can miss (EPISODIC)."""
    return _classes_with(table, EPISODIC)


def draw_warp(rng, warp, share=WARP_SHARE):
    """A playback speed for one crop: 1.0 for 1 - share of the draws, else log-uniform in
    [1 / (1 + warp), 1 + warp] (as often faster as slower). With warp 0 `rng` is not used."""
    if warp <= 0 or rng.random() >= share:
        return 1.0
    return float(np.exp(rng.uniform(-1.0, 1.0) * np.log1p(warp)))


def warp_span(length, speed):
    """How many samples to read so that time_warp at `speed` gives `length`."""
    return int(np.ceil((length - 1) * speed - 1e-9)) + 1


def time_warp(crop, speed, max_length=None):
    """crop (leads, n) played at `speed` (1.25: a rate 25 % faster, n / 1.25 samples), by linear interpolation,
    cut to max_length samples (read warp_span of them to fill it). Absent (zero) leads stay zero; at the small
    speeds used the band-passed content (under 50 Hz at 250 Hz) does not alias."""
    leads, n = crop.shape
    if speed == 1.0 or n < 2:
        return crop[:, :max_length]
    m = int(np.floor((n - 1) / speed + 1e-9)) + 1
    if max_length is not None:
        m = min(m, max_length)
    position = np.arange(m) * speed
    left = np.minimum(position.astype(np.int64), n - 2)
    fraction = (position - left).astype(np.float32)
    return (crop[:, left] * (1 - fraction) + crop[:, left + 1] * fraction).astype(np.float32)
