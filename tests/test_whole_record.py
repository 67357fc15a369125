"""Whole-record reading, variable-length training crops, position handling and reduced-lead consistency (#11)."""

import dataclasses

import numpy as np
import pytest
import torch

from ecgmamba.augment import episodic_classes
from ecgmamba.cache import build_cache
from ecgmamba.inference import predict_cached, predict_many
from ecgmamba.model import ECGMamba, ModelConfig, preset_config
from ecgmamba.preprocess import PreprocessConfig, aggregate, preprocess_recording, record_segments, window_starts
from ecgmamba.records import LEAD_SETS, TWELVE_LEADS, read_header, read_signal, select_leads
from ecgmamba.scoring import load_scoring
from ecgmamba.synthetic import generate_dataset
from ecgmamba.train import TrainConfig, WindowDataset, crop_batches, crop_plan, recalibrate_batchnorm, specialise

TINY = {"d_model": 16, "depth": 1, "d_state": 4, "stem_channels": 8, "num_samples": 512}
CPU = torch.device("cpu")


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return ECGMamba(preset_config("small", num_classes=26, **{**TINY, **overrides})).eval()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("whole_data")
    generate_dataset(str(directory), 12, seed=5, fs="mixed", duration_s="mixed")
    return str(directory)


def cached(data_dir, tmp_path, **preprocess):
    config = PreprocessConfig(target_fs=250, window_samples=512, **preprocess)
    return build_cache(data_dir, str(tmp_path / "cache"), config, workers=1, progress=False,
                       log=lambda message: None), config


# ---------------------------------------------------------------------------------------------------------------
# Reading a record


def test_whole_reading_is_one_segment_up_to_the_cap_then_equal_chunks_then_spread_chunks():
    config = PreprocessConfig(target_fs=250, window_samples=512, max_whole_seconds=10.0, max_windows=4)
    cap = 2500
    for n in (1, 300, 512, 2499, 2500):
        starts, length = record_segments(n, config)
        assert list(starts) == [0] and length == n
    starts, length = record_segments(2501, config)  # two equal chunks tiling the record
    assert len(starts) == 2 and length == 1251 and starts[0] == 0 and starts[-1] + length == 2501
    starts, length = record_segments(9000, config)
    assert len(starts) == 4 and length <= cap and starts[-1] + length == 9000
    assert all(b - a <= length for a, b in zip(starts, starts[1:]))  # no gap: every sample is read
    starts, length = record_segments(450_000, config)  # a 30-minute record: at most max_windows chunks of the cap
    assert len(starts) == 4 and length == cap and starts[0] == 0 and starts[-1] + cap == 450_000
    windows = dataclasses.replace(config, inference="windows")
    starts, length = record_segments(9000, windows)
    assert list(starts) == list(window_starts(9000, 512, 0.5, 4)) and length == 512


def test_aggregations_follow_their_definitions():
    logits = np.array([[-2.0, 0.5], [1.0, 3.0], [0.0, -1.0]])
    p = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(aggregate(p, logits, "mean"), p.mean(0))
    np.testing.assert_allclose(aggregate(p, logits, "max"), p.max(0))
    np.testing.assert_allclose(aggregate(p, logits, "noisy_or"), 1 - (1 - p).prod(0))
    np.testing.assert_allclose(aggregate(p, logits, "logit_mean"), 1 / (1 + np.exp(-logits.mean(0))))
    with pytest.raises(ValueError, match="aggregation"):
        PreprocessConfig(aggregation="median")


def test_a_whole_record_gets_what_the_network_gives_it_in_one_pass_whatever_else_is_batched():
    model = tiny_model()
    config = PreprocessConfig(target_fs=250, window_samples=512)
    rng = np.random.default_rng(0)
    long, other, same = (rng.standard_normal((12, n)).astype(np.float32) for n in (3000, 1700, 3000))
    together = predict_many(model, [long, other, same], config, CPU)
    with torch.no_grad():
        direct = torch.sigmoid(model(torch.from_numpy(long[None]))).numpy()[0]
    np.testing.assert_allclose(together[0], direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predict_many(model, [other], config, CPU)[0], together[1], rtol=1e-5, atol=1e-6)


def test_a_record_shorter_than_the_window_is_padded_and_the_padding_not_pooled():
    model = tiny_model()
    config = PreprocessConfig(target_fs=250, window_samples=512)
    short = np.random.default_rng(1).standard_normal((12, 40)).astype(np.float32)  # shorter than the stem's reach
    p = predict_many(model, [short], config, CPU)[0]
    padded = np.zeros((1, 12, 512), dtype=np.float32)
    padded[0, :, :40] = short
    with torch.no_grad():
        direct = torch.sigmoid(model(torch.from_numpy(padded), torch.tensor([40]))).numpy()[0]
        unmasked = torch.sigmoid(model(torch.from_numpy(padded))).numpy()[0]
    np.testing.assert_allclose(p, direct, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(p)) and not np.allclose(p, unmasked)


def test_a_30_minute_record_is_read_in_chunks_within_the_sample_budget():
    model = tiny_model()
    config = PreprocessConfig(target_fs=250, window_samples=512, max_whole_seconds=60.0)
    record = np.random.default_rng(2).standard_normal((12, 30 * 60 * 250)).astype(np.float32)
    shapes = []
    hook = model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    try:
        p = predict_many(model, [record], config, CPU, batch_size=64)
    finally:
        hook.remove()
    assert p.shape == (1, 26) and np.all((p >= 0) & (p <= 1))
    assert sum(s[0] for s in shapes) == 30 and all(s[2] == 15000 for s in shapes)  # all of it, in 60 s chunks
    assert all(s[0] * s[2] <= 64 * 512 for s in shapes)


def test_aggregation_is_applied_over_a_records_chunks():
    model = tiny_model()
    base = PreprocessConfig(target_fs=250, window_samples=512, max_whole_seconds=4.0)
    record = np.random.default_rng(3).standard_normal((12, 3000)).astype(np.float32)
    starts, length = record_segments(3000, base)
    chunks = np.stack([record[:, s:s + length] for s in starts])
    with torch.no_grad():
        logits = model(torch.from_numpy(chunks)).numpy()
    for method in ("mean", "max", "noisy_or", "logit_mean"):
        got = predict_many(model, [record], dataclasses.replace(base, aggregation=method), CPU)[0]
        np.testing.assert_allclose(got, aggregate(1 / (1 + np.exp(-logits)), logits, method), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Position handling


def test_position_none_has_no_embedding_and_reads_any_length():
    model = tiny_model(position="none")
    assert model.pos_embed is None and "pos_embed" not in model.state_dict()
    with torch.no_grad():
        for n in (512, 777, 5000):
            assert model(torch.zeros(2, 12, n)).shape == (2, 26)
    with pytest.raises(ValueError, match="position"):
        tiny_model(position="rotary")


def test_model_files_from_before_the_position_setting_load_as_learned():
    config = ModelConfig.from_dict({k: v for k, v in preset_config("small").to_dict().items() if k != "position"})
    assert config.position == "learned"


# ---------------------------------------------------------------------------------------------------------------
# Training crops


def test_crop_batches_see_every_record_once_within_the_budget_and_whole_when_short():
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(100, 512, 20), np.full(200, 2500), rng.integers(2500, 15000, 60)])
    window, budget, max_crop = 512, 16 * 512, 7500
    batches = crop_batches(lengths, window, max_crop, budget, seed=0, epoch=3)
    seen = [p for batch in batches for p, _ in batch]
    assert sorted(seen) == list(range(len(lengths)))
    for batch in batches:
        (length,) = {n for _, n in batch}  # one length per batch: no padding between records
        assert len(batch) * length <= budget
        assert window <= length <= max_crop
        assert all(lengths[p] >= length or lengths[p] < window for p, _ in batch)
    whole = {p: n for batch in batches for p, n in batch if lengths[p] == 2500}
    # a 10 s record is seen whole when its drawn crop reaches it: P = (7500 - 2500) / (7500 - 512) = 0.72
    assert np.mean([n == 2500 for n in whole.values()]) > 0.6
    assert batches == crop_batches(lengths, window, max_crop, budget, seed=0, epoch=3)
    assert batches != crop_batches(lengths, window, max_crop, budget, seed=0, epoch=4)


def test_crop_batches_give_every_rank_the_same_number_of_steps_and_disjoint_records():
    lengths = np.random.default_rng(1).integers(600, 9000, 101)
    parts = [crop_batches(lengths, 512, 4000, 8 * 512, 0, 0, rank, 3) for rank in range(3)]
    assert len({len(part) for part in parts}) == 1
    seen = [p for part in parts for batch in part for p, _ in batch]
    assert len(seen) == len(set(seen))


def test_window_crops_are_batch_size_windows():
    config = TrainConfig(batch_size=8, crop="window")
    preprocess = PreprocessConfig(target_fs=250, window_samples=512)
    batches = crop_plan(config, preprocess, np.full(40, 2500), (0, 1, 0))(0)
    assert [len(b) for b in batches] == [8] * 5 and {n for b in batches for _, n in b} == {512}


def test_min_crop_draws_crops_shorter_than_the_window_and_budgets_them_as_windows():
    lengths = np.full(400, 2500)
    window, budget, max_crop = 512, 8 * 512, 7500
    batches = crop_batches(lengths, window, max_crop, budget, seed=0, epoch=0, min_crop=200)
    assert sorted(p for batch in batches for p, _ in batch) == list(range(400))
    sizes = {n: len(batch) for batch in batches for _, n in batch}
    short = [n for n in sizes if n < window]
    # P(crop < window) = (512 - 200) / (7500 - 200) = 4.3 %, so about 17 of 400 records
    assert short and min(short) >= 200 and all(sizes[n] <= budget // window for n in short)
    assert all(len(batch) * max(n, window) <= budget for batch in batches for n in {n for _, n in batch})
    # without min_crop no crop is shorter than the window (today's plan, unchanged)
    plain = crop_batches(lengths, window, max_crop, budget, seed=0, epoch=0)
    assert min(n for batch in plain for _, n in batch) >= window
    assert plain == crop_batches(lengths, window, max_crop, budget, seed=0, epoch=0, min_crop=window)


def test_min_crop_seconds_reaches_the_plan_and_is_checked():
    preprocess = PreprocessConfig(target_fs=250, window_samples=512)
    plan = crop_plan(TrainConfig(batch_size=8, min_crop_seconds=1.0), preprocess, np.full(300, 2500), (0, 1, 0))(0)
    assert min(n for b in plan for _, n in b) == pytest.approx(250, abs=60)
    window_plan = crop_plan(TrainConfig(batch_size=8, crop="window", min_crop_seconds=1.0), preprocess,
                            np.full(40, 2500), (0, 1, 0))(0)
    assert {n for b in window_plan for _, n in b} == {512}  # "window" crops ignore it
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="min_crop_seconds"):
            TrainConfig(min_crop_seconds=bad).resolved()


def test_a_short_crop_of_part_of_a_record_is_not_supervised_on_single_beats(data_dir, tmp_path):
    cache, config = cached(data_dir, tmp_path)
    table = load_scoring("2021")
    episodic = episodic_classes(table)
    assert sorted(table.class_abbreviations[i] for i in np.flatnonzero(episodic)) == ["PAC|SVPB", "PVC|VPB"]
    dataset = WindowDataset(cache, np.arange(len(cache)), 512, TWELVE_LEADS, episodic=episodic)
    longest, shortest = int(np.argmax(cache.lengths)), int(np.argmin(cache.lengths))
    truth = cache.labels[longest].astype(np.float32)
    x, labels, valid = dataset[(longest, 300)]  # part of the record, shorter than the window: padded and masked
    labels = labels.numpy()
    assert x.shape == (12, 512) and int(valid) == 300 and not x[:, 300:].any()
    assert np.isnan(labels[episodic]).all()
    np.testing.assert_array_equal(labels[~episodic], truth[~episodic])
    _, labels, _ = dataset[(longest, 512)]  # a window's crop keeps every label, as before
    np.testing.assert_array_equal(labels.numpy(), truth)
    # a record shorter than the window, read whole, keeps every label
    n = int(cache.lengths[shortest])
    long_window = WindowDataset(cache, np.arange(len(cache)), n + 100, TWELVE_LEADS, episodic=episodic)
    x, labels, valid = long_window[(shortest, n)]
    assert x.shape == (12, n + 100) and int(valid) == n
    np.testing.assert_array_equal(labels.numpy(), cache.labels[shortest].astype(np.float32))


def test_dataset_returns_the_crop_asked_for_and_pads_a_short_record(data_dir, tmp_path):
    cache, config = cached(data_dir, tmp_path)
    dataset = WindowDataset(cache, np.arange(len(cache)), 512, TWELVE_LEADS)
    longest, shortest = int(np.argmax(cache.lengths)), int(np.argmin(cache.lengths))
    x, _, valid = dataset[(longest, 1000)]
    assert x.shape == (12, 1000) and int(valid) == 1000
    crop = x.float().numpy()
    signal = cache.model_input(longest, TWELVE_LEADS)
    assert any(np.allclose(crop, signal[:, s:s + 1000], atol=1e-3) for s in range(signal.shape[1] - 999))
    n = int(cache.lengths[shortest])
    x, _, valid = dataset[(shortest, n + 300)]  # a crop longer than the record: all of it, then zeros
    assert x.shape == (12, n + 300) and int(valid) == n and not x[:, n:].any()
    np.testing.assert_allclose(x[:, :n].float().numpy(), cache.model_input(shortest, TWELVE_LEADS), atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# Reduced-lead consistency


@pytest.mark.parametrize("leads", [("I", "II"), ("I", "II", "V2"), ("I", "II", "III", "aVR", "aVL", "aVF")])
def test_record_scaling_in_training_matches_inference_on_the_reduced_record(data_dir, tmp_path, leads):
    """A training sample of a lead set is scaled by those leads only, exactly as inference scales a record that
    has only them."""
    cache, config = cached(data_dir, tmp_path, scaling="record")
    present = np.array([lead in leads for lead in TWELVE_LEADS])
    dataset = WindowDataset(cache, np.arange(len(cache)), 512, TWELVE_LEADS, [leads])
    for i, path in enumerate(cache.meta["files"][:4]):
        header = read_header(path)
        raw = select_leads(read_signal(path[:-4] + ".mat", header), header.leads, TWELVE_LEADS)
        expected = preprocess_recording(raw[present], header.fs, config)[:, :cache.lengths[i]]
        n = int(cache.lengths[i])
        x, _, valid = dataset[(i, n)]
        x = x.float().numpy()
        np.testing.assert_allclose(x[present, :n], expected, rtol=2e-3, atol=2e-3)
        assert not x[~present].any()
        # the 12-lead scale is not the reduced one: the test would fail if training scaled by all 12 leads
        twelve = preprocess_recording(raw, header.fs, config)[present, :n]
        assert not np.allclose(twelve, expected, rtol=2e-3, atol=2e-3)
        # the sliced model's own input is the same
        np.testing.assert_allclose(cache.model_input(i, leads), expected, rtol=2e-3, atol=2e-3)


def test_recalibrated_batchnorm_holds_the_statistics_of_its_own_lead_set(data_dir, tmp_path):
    cache, preprocess = cached(data_dir, tmp_path)
    shared = tiny_model()
    shared.train()
    with torch.no_grad():  # mixed statistics, as after shared training
        for leads in LEAD_SETS:
            mask = torch.tensor([lead in leads for lead in TWELVE_LEADS], dtype=torch.float32)[:, None]
            shared(torch.from_numpy(cache.model_input(0, TWELVE_LEADS)[None, :, :512]) * mask)
    shared.eval()
    config = TrainConfig(batch_size=4)
    leads = ("I", "II")
    model = specialise(shared, leads)
    indices = np.arange(len(cache))
    recalibrate_batchnorm(model, cache, indices, leads, preprocess, config, seed=0)
    # what the first BatchNorm saw: the sliced convolution's outputs on the lead set's own crops
    dataset = WindowDataset(cache, indices, 512, leads, None, 0)
    from ecgmamba.train import RECALIBRATION_EPOCH

    dataset.set_epoch(RECALIBRATION_EPOCH)
    means = []
    with torch.no_grad():
        for batch in crop_plan(config, preprocess, cache.lengths, (0, 1, 0))(RECALIBRATION_EPOCH):
            x = torch.stack([dataset[item][0] for item in batch]).float()
            means.append(model.stem[0](x).mean(dim=(0, 2)))
    np.testing.assert_allclose(model.stem[1].running_mean.numpy(), torch.stack(means).mean(0).numpy(),
                               rtol=1e-4, atol=1e-5)
    assert not torch.allclose(model.stem[1].running_mean, specialise(shared, leads).stem[1].running_mean)
    assert model.stem[1].momentum == shared.stem[1].momentum  # restored
    # the weights are those of the shared network
    for name, value in specialise(shared, leads).state_dict().items():
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(value, model.state_dict()[name]), name


def test_validation_of_a_reduced_lead_set_uses_its_own_scale(data_dir, tmp_path):
    cache, preprocess = cached(data_dir, tmp_path, scaling="record")
    model = tiny_model()
    leads = ("I", "II")
    sliced = specialise(model, leads)
    indices = np.arange(len(cache))
    via_mask = predict_cached(model, cache, indices, TWELVE_LEADS, preprocess, CPU, active_leads=leads)
    via_slice = predict_cached(sliced, cache, indices, leads, preprocess, CPU)
    np.testing.assert_allclose(via_mask, via_slice, rtol=1e-4, atol=1e-5)


def test_stem_blocks_keep_the_token_grid_and_slice_like_the_plain_stem():
    plain, deep = tiny_model(), tiny_model(stem_blocks=2)
    x = torch.randn(2, 12, 1500)
    with torch.no_grad():
        assert plain.stem(x).shape == deep.stem(x).shape  # same tokens, same times (token_centres)
        sliced = specialise(deep, ("I", "II")).eval()
        np.testing.assert_allclose(sliced(x[:, :2]).numpy(),
                                   deep(x * torch.tensor([1.0, 1.0] + [0.0] * 10)[:, None]).numpy(),
                                   rtol=1e-4, atol=1e-5)


def test_the_large_preset_is_paper_width_with_the_whole_record_design():
    large, paper = preset_config("large"), preset_config("paper")
    assert (large.d_model, large.depth) == (paper.d_model, paper.depth)
    assert (large.cls_token, large.pooling, large.position) == ("none", "stats", "none")
    from ecgmamba.train import TrainConfig

    resolved = TrainConfig(preset="large", device="cpu").resolved()
    assert resolved.batch_size * large.num_samples == 32 * paper.num_samples  # paper's samples per step
    model = ECGMamba(preset_config("large", num_classes=26, d_model=16, depth=1, d_state=4, stem_channels=8)).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 12, 4096 + 777)).shape == (1, 26)
