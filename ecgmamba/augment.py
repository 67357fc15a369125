"""Label-preserving training augmentation: new noise on the same beats.

Sinus arrhythmia, PAC and PVC are read from beat timing, and the network can fit them on its training records
by their waveforms instead (bench/RESULTS.md: training-record AUPRC 1.000, test 0.76 for sinus arrhythmia).
Fresh noise and baseline wander on every presentation change the waveform and leave the timing untouched.

Nothing here changes timing or voltage: time warps and resampling move RR intervals and rates across the rhythm
labels' thresholds, and amplitude scaling moves QRS voltages across the low-voltage label's (0.5 mV in the limb
leads). Crops come from the cache already band-passed, so the added noise is band-passed the same way and the
wander kept to what the 0.5 Hz high-pass lets through; noise the model never meets at inference would teach it
nothing. Sizes are relative to the crop's own RMS, so they mean the same under every scaling.
"""

import numpy as np
import scipy.signal

from ecgmamba.preprocess import PreprocessConfig, bandpass_sos

WANDER_HZ = (0.3, 1.0)  # below 0.3 Hz the 0.5 Hz high-pass (order 4, both directions) leaves under 2 %


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
