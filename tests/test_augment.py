"""Training augmentation: it adds noise and wander of the sizes asked for, keeps absent leads absent, never shifts
timing, and leaves training bit-identical when off."""

import numpy as np
import pytest

from ecgmamba.augment import augment_crop
from ecgmamba.cache import build_cache
from ecgmamba.preprocess import PreprocessConfig
from ecgmamba.records import TWELVE_LEADS
from ecgmamba.synthetic import generate_dataset
from ecgmamba.train import TrainConfig, WindowDataset

FS = 250
BAND = PreprocessConfig(target_fs=FS, window_samples=512)


def beats(n=2500, leads=12):
    """Spikes every 0.8 s on a flat line: where the beats are is then plain to see."""
    crop = np.zeros((leads, n), dtype=np.float32)
    crop[:, ::200] = np.linspace(0.5, 1.5, leads)[:, None]
    return crop


def test_off_returns_the_crop_and_draws_nothing():
    crop, rng = beats(), np.random.default_rng(1)
    before = rng.bit_generator.state
    assert augment_crop(crop, rng, BAND) is crop
    assert rng.bit_generator.state == before


def test_noise_is_in_the_band_the_model_sees_and_within_its_size():
    crop = beats()
    rms = float(np.sqrt(np.mean(crop.astype(np.float64) ** 2)))
    stds = []
    for seed in range(40):
        added = augment_crop(crop, np.random.default_rng(seed), BAND, noise=0.2) - crop
        stds.append(added.std())
        assert abs(added.mean()) < 0.05 * rms
        spectrum = np.abs(np.fft.rfft(added, axis=1)) ** 2
        freqs = np.fft.rfftfreq(crop.shape[1], 1 / FS)
        assert spectrum[:, freqs > 50].sum() < 0.02 * spectrum.sum()  # band-passed at 40 Hz like the crop
        assert spectrum[:, freqs > 20].sum() > 0.2 * spectrum.sum()  # and broadband within it
    stds = np.array(stds) / rms
    assert stds.max() <= 0.2 * 1.02 and stds.min() < 0.05 and stds.max() > 0.15  # sizes drawn over [0, 0.2]


def test_wander_is_slow_and_within_its_size():
    crop = beats()
    rms = float(np.sqrt(np.mean(crop.astype(np.float64) ** 2)))
    for seed in range(20):
        added = augment_crop(crop, np.random.default_rng(seed), BAND, wander=0.3) - crop
        assert np.abs(added).max() <= 0.3 * rms * 1.0001
        spectrum = np.abs(np.fft.rfft(added, axis=1)) ** 2
        freqs = np.fft.rfftfreq(crop.shape[1], 1 / FS)
        assert spectrum[:, freqs > 1.5].sum() < 0.05 * spectrum.sum()
        assert spectrum[:, freqs < 0.25].sum() < 0.2 * spectrum.sum()  # not what the high-pass removes


def test_absent_leads_stay_zero_and_timing_is_kept():
    crop = beats()
    crop[[2, 3, 4, 5, 6, 8, 9, 10, 11]] = 0  # the three-lead set: I, II, V2
    out = augment_crop(crop, np.random.default_rng(0), BAND, noise=0.1, wander=0.5)
    assert out.shape == crop.shape and out.dtype == np.float32
    assert not out[[2, 3, 4, 5, 6, 8, 9, 10, 11]].any()
    assert out[[0, 1, 7]].std(axis=1).min() > 0
    for lead in (0, 1, 7):  # each beat is still the largest sample near it, where it was
        peaks = [start + int(np.argmax(out[lead, start:start + 100])) for start in range(0, 2500, 200)]
        assert peaks == list(range(0, 2500, 200))
    assert not augment_crop(np.zeros((12, 100), np.float32), np.random.default_rng(0), BAND, 0.5, 0.5).any()


@pytest.mark.parametrize("name", ["noise_augment", "wander_augment"])
@pytest.mark.parametrize("value", [-0.1, float("nan"), 11.0])
def test_bad_sizes_are_refused(name, value):
    with pytest.raises(ValueError, match=name):
        TrainConfig(**{name: value}).resolved()


def test_dataset_augments_reproducibly_and_not_when_off(tmp_path):
    generate_dataset(str(tmp_path / "data"), 4, seed=3)
    config = PreprocessConfig(target_fs=FS, window_samples=512)
    cache = build_cache(str(tmp_path / "data"), str(tmp_path / "cache"), config, workers=1, progress=False,
                        log=lambda message: None)
    plain = WindowDataset(cache, np.arange(4), 512, TWELVE_LEADS, seed=7)
    off = WindowDataset(cache, np.arange(4), 512, TWELVE_LEADS, seed=7, noise=0.0, wander=0.0)
    noisy = WindowDataset(cache, np.arange(4), 512, TWELVE_LEADS, seed=7, noise=0.1, wander=0.2)
    for i in range(4):
        x, labels, valid = plain[(i, 1000)]
        assert np.array_equal(x.numpy(), off[(i, 1000)][0].numpy())
        a, b = noisy[(i, 1000)], noisy[(i, 1000)]
        assert np.array_equal(a[0].numpy(), b[0].numpy())  # the same (seed, epoch, record), the same sample
        assert np.array_equal(a[1].numpy(), labels.numpy()) and int(a[2]) == int(valid)
        assert not np.array_equal(a[0].numpy(), x.numpy())
        difference = (a[0].float() - x.float()).numpy()
        assert np.abs(difference).max() < 2.0  # noise of a tenth of the RMS, not a different record
    first = noisy[(0, 1000)][0].numpy()
    noisy.set_epoch(1)
    assert not np.array_equal(noisy[(0, 1000)][0].numpy(), first)  # fresh noise every epoch
