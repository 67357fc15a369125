"""Training augmentation: it adds noise and wander of the sizes asked for, keeps absent leads absent, never shifts
timing, and leaves training bit-identical when off; time warps change the speed asked for and hide the labels a
warp may change from the loss."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ecgmamba.augment import augment_crop, draw_warp, time_warp, warp_keeps, warp_span
from ecgmamba.cache import build_cache
from ecgmamba.preprocess import PreprocessConfig
from ecgmamba.records import TWELVE_LEADS
from ecgmamba.scoring import load_scoring
from ecgmamba.synthetic import generate_dataset
from ecgmamba.train import TrainConfig, WindowDataset, asymmetric_loss, classification_loss

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


# ---------------------------------------------------------------------------------------------------------------
# Time warps


def test_a_warp_plays_the_crop_faster_or_slower():
    t = np.arange(2500) / FS
    crop = np.stack([np.sin(2 * np.pi * 3.0 * t), np.zeros_like(t)]).astype(np.float32)
    for speed in (1.25, 0.8):
        out = time_warp(crop, speed)
        assert out.dtype == np.float32 and out.shape == (2, int(np.floor(2499 / speed)) + 1)
        expected = np.sin(2 * np.pi * 3.0 * speed * np.arange(out.shape[1]) / FS)
        assert np.abs(out[0] - expected).max() < 2e-3  # a 3 Hz wave is now a 3.75 (2.4) Hz one
        assert not out[1].any()  # an absent lead stays absent
    spikes = time_warp(beats(), 1.25)
    peaks = np.flatnonzero(spikes[0] == spikes[0].max())
    assert list(peaks) == list(range(0, spikes.shape[1], 160))  # beats 0.8 s apart are now 0.64 s apart
    assert time_warp(crop, 1.0, 1000).shape == (2, 1000)


def test_a_warp_fills_the_length_asked_for():
    crop = beats(3000)
    for speed in (0.77, 0.8, 0.9999, 1.0, 1.0001, 1.25, 1.3):
        span = warp_span(2048, speed)
        assert abs(span - 2048 * speed) < 2
        assert time_warp(crop[:, :span], speed, 2048).shape == (12, 2048)
    assert time_warp(crop[:, :2500], 1.25, 4000).shape == (12, 2000)  # a short record gives what it has


def test_speeds_are_drawn_within_the_range_for_half_the_crops():
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    assert draw_warp(rng, 0.0) == 1.0 and rng.bit_generator.state == before
    speeds = np.array([draw_warp(rng, 0.3) for _ in range(2000)])
    warped = speeds[speeds != 1.0]
    assert 0.45 < len(warped) / len(speeds) < 0.55
    assert warped.min() >= 1 / 1.3 and warped.max() <= 1.3
    assert 0.45 < np.mean(warped > 1) < 0.55 and warped.min() < 0.8 and warped.max() > 1.25


@pytest.mark.parametrize("share", [0.0, 0.8, 1.0])
def test_warp_share_sets_the_fraction_of_crops_warped(share):
    rng = np.random.default_rng(1)
    speeds = np.array([draw_warp(rng, 0.3, share) for _ in range(2000)])
    assert abs(np.mean(speeds != 1.0) - share) < 0.04


def test_a_warp_keeps_the_rhythm_classes_only():
    table = load_scoring("2021")
    keeps = warp_keeps(table)
    kept = sorted(table.class_abbreviations[i] for i in np.flatnonzero(keeps))
    assert kept == ["AF", "AFL", "PAC|SVPB", "PVC|VPB", "SA"]
    index = table.code_to_index()
    for code in ("426783006", "426177001", "427084000", "270492004", "59118001", "164909002", "251146004"):
        assert not keeps[index[code]]  # sinus rhythm, brady, tachy, first-degree block, RBBB, LBBB, low QRS voltage


def test_the_presets_choose_their_warp_and_a_setting_overrides_it():
    assert TrainConfig(preset="small").resolved().time_warp == 0.3
    assert TrainConfig(preset="large").resolved().time_warp == 0.3
    assert TrainConfig(preset="paper").resolved().time_warp == 0.0  # the published recipe has none
    assert TrainConfig(preset="small", time_warp=0).resolved().time_warp == 0.0
    assert TrainConfig(preset="paper", time_warp=0.2).resolved().time_warp == 0.2


@pytest.mark.parametrize("value", [-0.1, float("nan"), 1.5])
def test_bad_warps_are_refused(value):
    with pytest.raises(ValueError, match="time_warp"):
        TrainConfig(time_warp=value).resolved()
    with pytest.raises(ValueError, match="warp_share"):
        TrainConfig(warp_share=value).resolved()


def test_dataset_warps_half_the_crops_and_hides_the_labels_a_warp_may_change(tmp_path):
    generate_dataset(str(tmp_path / "data"), 6, seed=4)
    config = PreprocessConfig(target_fs=FS, window_samples=512)
    cache = build_cache(str(tmp_path / "data"), str(tmp_path / "cache"), config, workers=1, progress=False,
                        log=lambda message: None)
    keeps = warp_keeps(load_scoring("2021"))
    plain = WindowDataset(cache, np.arange(6), 512, TWELVE_LEADS, seed=7)
    off = WindowDataset(cache, np.arange(6), 512, TWELVE_LEADS, seed=7, warp=0.0, warp_keeps=keeps)
    warping = WindowDataset(cache, np.arange(6), 512, TWELVE_LEADS, seed=7, warp=0.3, warp_keeps=keeps)
    with pytest.raises(ValueError, match="warp_keeps"):
        WindowDataset(cache, np.arange(6), 512, TWELVE_LEADS, warp=0.3)
    hidden = 0
    for epoch in range(4):
        for dataset in (plain, off, warping):
            dataset.set_epoch(epoch)
        for i in range(6):
            x, labels, valid = plain[(i, 1000)]
            assert np.array_equal(x.numpy(), off[(i, 1000)][0].numpy())  # off: the same crops as before
            wx, wlabels, wvalid = warping[(i, 1000)]
            assert np.array_equal(wx.numpy(), warping[(i, 1000)][0].numpy())  # reproducible
            assert wx.shape == x.shape and 1 <= int(wvalid) <= 1000
            nan = np.isnan(wlabels.numpy())
            assert np.array_equal(wlabels.numpy()[~nan], labels.numpy()[~nan])
            if nan.any():
                assert np.array_equal(nan, ~keeps)
                hidden += 1
            else:  # an unwarped crop is a crop of the record as it is
                whole = cache.model_input(i, TWELVE_LEADS).astype(np.float16)
                assert any(np.array_equal(wx.numpy(), whole[:, s:s + 1000]) for s in range(whole.shape[1] - 999))
    assert 4 <= hidden <= 20  # about half of the 24 crops
    always = WindowDataset(cache, np.arange(6), 512, TWELVE_LEADS, seed=7, warp=0.3, warp_keeps=keeps, warp_share=1.0)
    assert all(np.array_equal(np.isnan(always[(i, 1000)][1].numpy()), ~keeps) for i in range(6))


def test_the_loss_leaves_out_nan_labels():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, requires_grad=True)
    targets = (torch.rand(4, 6) > 0.5).float()
    pos_weight = torch.linspace(1, 3, 6)
    plain = classification_loss(logits, targets, "weighted_bce", pos_weight)
    assert torch.allclose(plain, F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight))
    assert torch.allclose(classification_loss(logits, targets, "asymmetric"), asymmetric_loss(logits, targets))
    hidden = targets.clone()
    hidden[:2, 3:] = float("nan")
    for kind in ("weighted_bce", "asymmetric"):
        loss = classification_loss(logits, hidden, kind, pos_weight)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss) and not grad[:2, 3:].any() and grad[2:].abs().min() > 0
    present = ~torch.isnan(hidden)
    elementwise = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none")
    assert torch.allclose(classification_loss(logits, hidden, "weighted_bce", pos_weight), elementwise[present].mean())
