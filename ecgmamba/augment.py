"""Label-preserving training augmentation: new noise on the same beats.

Sinus arrhythmia, PAC and PVC are read from beat timing, and the network can fit them on its training records
by their waveforms instead (bench/RESULTS.md: training-record AUPRC 1.000, test 0.76 for sinus arrhythmia).
Fresh noise and baseline wander on every presentation change the waveform and leave the timing untouched.

Nothing here changes timing or voltage: time warps and resampling move RR intervals and rates across the rhythm
labels' thresholds, and amplitude scaling moves QRS voltages across the low-voltage label's (0.5 mV in the limb
leads). The sizes are relative to the crop's own RMS, so they mean the same under every scaling.
"""

import numpy as np


def augment_crop(crop, rng, fs, noise=0.0, wander=0.0):
    """crop (leads, n) float32 plus white noise of std up to `noise` x the crop's RMS and baseline wander up to
    `wander` x the RMS per lead (two sinusoids of 0.05-0.5 Hz mixed into the leads in random proportions), each
    size drawn uniformly per call. Absent leads (all zero) stay zero; with both sizes 0 the crop is returned as
    it is and `rng` is not drawn from."""
    if noise <= 0 and wander <= 0:
        return crop
    present = np.any(crop != 0, axis=1)
    if not present.any() or crop.shape[1] == 0:
        return crop
    rms = float(np.sqrt(np.mean(np.square(crop[present], dtype=np.float64))))
    leads, n = crop.shape
    added = np.zeros((leads, n), dtype=np.float32)
    if noise > 0:
        added += rng.standard_normal((leads, n), dtype=np.float32) * np.float32(rng.uniform(0, noise) * rms)
    if wander > 0:
        t = np.arange(n, dtype=np.float64) / fs
        sources = np.sin(2 * np.pi * rng.uniform(0.05, 0.5, (2, 1)) * t + rng.uniform(0, 2 * np.pi, (2, 1)))
        mixing = rng.uniform(-1.0, 1.0, (leads, 2)) * (rng.uniform(0, wander) * rms / 2)
        added += (mixing @ sources).astype(np.float32)
    return crop + added * present[:, None]
