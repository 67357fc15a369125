"""The auxiliary rhythm target: the detector finds the generator's beats, the variability it reads separates sinus
arrhythmia from a normal sinus rhythm, it is blind to a time warp and to the lead set, and training with it
learns the target while serving the same model files."""

import math

import numpy as np
import pytest
import torch

from ecgmamba.augment import time_warp
from ecgmamba.beats import FLOOR, MIN_INTERVALS, beat_mask, detect_beats, rhythm_target, rr_features, rr_variability
from ecgmamba.cache import build_cache
from ecgmamba.metrics import compute_auc
from ecgmamba.model import ECGMamba, preset_config
from ecgmamba.preprocess import PreprocessConfig, preprocess_recording
from ecgmamba.records import TWELVE_LEADS
from ecgmamba.synthetic import SA, SB, SR, generate_dataset, generate_record
from ecgmamba.train import WindowDataset, rhythm_loss

FS = 250
PREPROCESS = PreprocessConfig(target_fs=FS, scaling="record")


def hard_record(seed, labels=None, seconds=10.0):
    rng = np.random.default_rng(seed)
    fs = int(rng.choice([257, 500, 1000]))
    signal, labels, _, _, events = generate_record(rng, fs, seconds, labels, hard=True, return_events=True)
    return preprocess_recording(signal, fs, PREPROCESS), labels, np.asarray(events["beats"]) * FS


def test_the_detector_finds_the_generators_beats_and_nothing_else():
    recalls, precisions = [], []
    for seed in range(30):
        crop, _, truth = hard_record(seed)
        found = detect_beats(crop, FS)
        truth = truth[(truth > 10) & (truth < crop.shape[1] - 10)]
        distance = np.abs(truth[:, None] - found[None, :])
        recalls.append(np.mean(distance.min(1) < 0.1 * FS))
        precisions.append(np.mean(distance.min(0) < 0.1 * FS))
    assert np.mean(recalls) > 0.95 and np.mean(precisions) > 0.95


def test_the_variability_separates_sinus_arrhythmia_from_a_normal_sinus_rhythm():
    targets, is_sa = [], []
    for seed in range(40):
        for labels in ([SR], [SR, SA], [SB], [SB, SA]):  # at a normal rate and at the slow one, where it is hardest
            crop, _, _ = hard_record(1000 + seed, labels)
            targets.append(rhythm_target(crop, FS))
            is_sa.append(SA in labels)
    auroc, _, _, _ = compute_auc(np.array(is_sa, dtype=float)[:, None], np.array(targets)[:, None])
    assert auroc > 0.9


def test_a_few_wrong_intervals_barely_move_the_variability_and_too_few_give_none():
    regular = np.cumsum(np.full(20, 200.0))
    assert rr_variability(regular) == 0.0
    modulated = np.cumsum(200 * (1 + 0.08 * np.sin(np.arange(20) / 2.0)))
    premature = modulated.copy()
    premature[10] -= 60  # an early beat and its pause
    assert abs(rr_variability(premature) - rr_variability(modulated)) < 0.25 * rr_variability(modulated)
    assert math.isnan(rr_variability(regular[:MIN_INTERVALS]))
    assert math.isnan(rhythm_target(np.zeros((12, 3 * FS), dtype=np.float32), FS))  # a flat line has no beats
    assert math.isnan(rhythm_target(np.zeros((12, 2), dtype=np.float32), FS))
    assert rhythm_target(np.zeros((12, 0), dtype=np.float32), FS) != 0.0  # NaN, not a value


def test_a_time_warp_and_a_reduced_lead_set_leave_the_target_where_it_was():
    crop, _, _ = hard_record(7, [SR, SA], seconds=20.0)
    target = rhythm_target(crop, FS)
    assert target > np.log(0.04 + FLOOR)
    for speed in (0.8, 1.25):
        assert abs(rhythm_target(time_warp(crop, speed), FS) - target) < 0.2
    assert abs(rhythm_target(crop[:2], FS) - target) < 0.2  # leads I and II


def test_the_dataset_gives_the_target_only_when_asked_and_training_loss_skips_the_unknown(tmp_path):
    generate_dataset(str(tmp_path / "data"), 4, seed=3)
    config = PreprocessConfig(target_fs=FS, window_samples=512)
    cache = build_cache(str(tmp_path / "data"), str(tmp_path / "cache"), config, workers=1, progress=False,
                        log=lambda message: None)
    plain = WindowDataset(cache, np.arange(4), 512, TWELVE_LEADS, seed=7, noise=0.1)
    rhythm = WindowDataset(cache, np.arange(4), 512, TWELVE_LEADS, seed=7, noise=0.1, rhythm=True)
    for i in range(4):
        a, b = plain[(i, 2000)], rhythm[(i, 2000)]
        assert len(a) == 3 and len(b) == 4
        assert all(torch.equal(x, y) for x, y in zip(a, b))  # the target takes no draw from the crop's randomness
        assert np.isfinite(float(b[3])) and -7 < float(b[3]) < 0
    predicted = torch.tensor([-3.0, -2.0, 5.0], requires_grad=True)
    loss = rhythm_loss(predicted, torch.tensor([-3.0, -2.5, float("nan")]))
    assert torch.isclose(loss, torch.tensor(0.0625))  # the NaN crop's huge error is not counted
    loss.backward()
    assert predicted.grad[2] == 0
    none = rhythm_loss(predicted, torch.full((3,), float("nan")))
    assert none.item() == 0.0 and none.requires_grad


def test_the_rhythm_head_is_an_extra_output_and_leaves_the_class_logits_alone():
    config = preset_config("small", d_model=16, depth=1, d_state=4, stem_channels=8, num_samples=512, num_classes=5)
    torch.manual_seed(0)
    plain = ECGMamba(config).eval()
    torch.manual_seed(0)
    headed = ECGMamba(preset_config("small", d_model=16, depth=1, d_state=4, stem_channels=8, num_samples=512,
                                    num_classes=5, rhythm_head=True)).eval()
    headed.load_state_dict({**headed.state_dict(), **plain.state_dict()})
    x = torch.randn(3, 12, 700)
    logits, rhythm = headed(x, with_rhythm=True)
    assert rhythm.shape == (3,) and torch.allclose(logits, plain(x)) and torch.allclose(headed(x), plain(x))
    with pytest.raises(ValueError, match="rhythm_head"):
        plain(x, with_rhythm=True)


def test_the_batched_torch_detector_finds_the_same_beats_as_detect_beats():
    crops = [hard_record(seed)[0] for seed in range(12)]
    n = min(c.shape[1] for c in crops)
    batch = torch.from_numpy(np.stack([c[:, :n] for c in crops]).astype(np.float32))
    found = beat_mask(batch, FS)
    recall, precision = [], []
    for crop, row in zip(batch.numpy(), found):
        ours, theirs = torch.nonzero(row).flatten().numpy(), detect_beats(crop, FS)
        distance = np.abs(theirs[:, None] - ours[None, :])
        recall.append(np.mean(distance.min(1) <= 2))
        precision.append(np.mean(distance.min(0) <= 2))
    assert np.mean(recall) > 0.97 and np.mean(precision) > 0.97


def test_rr_features_measure_intervals_relative_to_the_median_and_ignore_padding():
    crop, _, truth = hard_record(7, [SR])
    n = crop.shape[1]
    padded = torch.zeros(2, 12, n + 800)
    padded[0, :, :n] = torch.from_numpy(crop)
    padded[1, :, :n] = torch.from_numpy(crop)
    features = rr_features(padded, FS, valid_samples=torch.tensor([n, n]))
    alone = rr_features(torch.from_numpy(crop)[None], FS)
    assert torch.allclose(features[0, :, :n], alone[0], atol=1e-6)   # padding changes nothing
    assert torch.all(features[:, :, n:] == 0)                       # and is not read
    inside = features[0, 2] > 0
    assert inside.float().mean() > 0.7                               # most of a 10 s record lies between beats
    median_rr = np.median(np.diff(truth)) / FS
    assert abs(float(features[0, 1][inside].exp().median()) - median_rr) < 0.05
    assert float(features[0, 0][inside].abs().max()) < 0.3           # sinus rhythm: every interval near the median
    two_leads = padded.clone()
    two_leads[:, 2:] = 0                                             # leads I and II alone: still the beats
    assert (rr_features(two_leads, FS, torch.tensor([n, n]))[0, 2] > 0).float().mean() > 0.7


def test_a_network_with_rr_features_needs_a_rate_reads_any_length_and_adds_only_the_features():
    with pytest.raises(ValueError, match="sampling_rate"):
        ECGMamba(preset_config("small", rr_features=True, sampling_rate=0, depth=1))
    torch.manual_seed(0)
    model = ECGMamba(preset_config("small", rr_features=True, sampling_rate=FS, depth=1)).eval()
    crop = torch.from_numpy(hard_record(3)[0])[None]
    with torch.no_grad():
        padded = model(torch.cat([crop, torch.zeros(1, 12, 1000)], dim=-1), torch.tensor([crop.shape[-1]]))
        short = model(crop[..., :100])                               # shorter than one beat: no interval
    assert torch.isfinite(padded).all() and torch.isfinite(short).all()
    with torch.no_grad():
        model.rr_proj.weight.zero_()
        model.rr_proj.bias.zero_()
        plain = ECGMamba(preset_config("small", rr_features=False, depth=1)).eval()
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("rr_proj")})
        assert torch.allclose(model(crop), plain(crop), atol=1e-5)   # the features are all it adds
