"""Beat times and RR-interval variability read from a preprocessed crop: an auxiliary training target.

Sinus arrhythmia is a rhythm measurement (the RR interval swinging with breathing by more than normal heart-rate
variability), yet the labels only say yes or no. On the hard benchmark the networks order the modulation's depth
almost perfectly within one patient but their SA score's level drifts between patients with the heart rate
(bench/RESULTS.md), which a yes/no label cannot correct. A continuous target, the crop's own RR variability, asks
the pooled feature to carry that measurement at every rate (train.py's `rhythm_target`).

The detector needs no labels and no beat annotations, so it serves the public data as well as the synthetic: the
QRS complexes are where the summed squared slope of the present leads peaks. It is meant to be robust on
average, not exact: the variability is a median-based spread, so a missed beat, a T wave taken for a beat or a
premature beat and its pause move a few intervals and barely the target.
"""

import numpy as np
import scipy.signal

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
