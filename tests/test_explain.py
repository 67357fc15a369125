"""ecgmamba.explain: token evidence that adds up, time alignment, and the drawing for full and reduced leads."""

import os

import numpy as np
import pytest
import torch

from ecgmamba.explain import explain, resolve_classes, token_centres, token_evidence
from ecgmamba.model import ECGMamba, ModelConfig, preset_config
from ecgmamba.preprocess import PreprocessConfig
from ecgmamba.reduced_leads import write_reduced_copy
from ecgmamba.synthetic import generate_dataset
from ecgmamba.train import TrainConfig, training_code

TINY_MODEL = {"d_model": 16, "depth": 1, "d_state": 4, "stem_channels": 8, "num_samples": 512}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = tmp_path_factory.mktemp("explain_data")
    generate_dataset(str(data), 24, seed=4, fs="mixed", duration_s="mixed")
    model = tmp_path_factory.mktemp("explain_model")
    training_code(str(data), str(model), TrainConfig(preset="small", epochs=1, batch_size=8, model=TINY_MODEL,
                                                     progress=False, cache_workers=1, device="cpu"))
    return str(data), str(model)


def test_with_mean_pooling_the_record_logit_is_the_mean_of_the_token_logits():
    torch.manual_seed(0)
    model = ECGMamba(ModelConfig(num_samples=512, d_model=16, depth=2, d_state=4, stem_channels=8,
                                 stem_paddings=(2, 7), cls_token="none", pooling="mean")).eval()
    x = torch.randn(3, 12, 512)
    with torch.no_grad():
        features, position = model.token_features(x)
        assert position is None
        torch.testing.assert_close(model.head(features).mean(dim=1), model(x), rtol=1e-5, atol=1e-5)


def test_with_concat_pooling_a_record_of_identical_tokens_scores_as_each_token():
    """A token is scored as if it were both the mean and the maximum: when every token is the same, the record's
    logit and each token's agree."""
    torch.manual_seed(0)
    model = ECGMamba(ModelConfig(num_samples=512, d_model=16, depth=2, d_state=4, stem_channels=8,
                                 stem_paddings=(2, 7), cls_token="none", pooling="concat")).eval()
    assert model.head.in_features == 32
    features = torch.randn(2, 1, 16).expand(2, 9, 16)
    per_token = model.token_logits(features)
    pooled = model.head(torch.cat([features.mean(1), features.amax(1)], dim=-1))
    torch.testing.assert_close(per_token[:, 0], pooled)
    torch.testing.assert_close(per_token[:, 5], pooled)


def test_token_centres_follow_the_strided_stem():
    config = preset_config("small")
    centres = token_centres(config, 3)
    strides = np.prod(config.stem_strides)
    assert np.allclose(np.diff(centres), strides)  # one token every 12 input samples
    # first token: conv2 output 0 sees conv1 outputs -7..7, whose centres are 3j - 2 + 6.5
    assert centres[0] == pytest.approx((0 * 4 - 7 + 7) * 3 - 2 + 6.5)


def test_a_beat_moves_the_evidence_of_the_tokens_around_it_only():
    torch.manual_seed(1)
    config = ModelConfig(num_samples=512, d_model=16, depth=2, d_state=4, stem_channels=8, stem_paddings=(2, 7),
                         cls_token="none", pooling="mean", num_classes=3)
    model = ECGMamba(config).eval()
    for layer in model.layers:  # silence the mixers: each token then sees only its own receptive field
        torch.nn.init.zeros_(layer.mixer.out_proj.weight)
    preprocess = PreprocessConfig(target_fs=250, window_samples=512)
    signal = np.zeros((12, 2000), dtype=np.float32)
    times, before = token_evidence(model, signal, preprocess, torch.device("cpu"))
    signal[:, 1000:1010] = 3.0  # a spike at 4.0 s
    _, after = token_evidence(model, signal, preprocess, torch.device("cpu"))
    moved = np.abs(after - before).max(axis=1) > 1e-6
    assert moved.any() and np.all(np.abs(times[moved] - 4.02) < 0.2)


def test_explain_draws_a_12_lead_record_and_a_reduced_one(trained, tmp_path):
    data, model = trained
    header = sorted(f for f in os.listdir(data) if f.endswith(".hea"))[0]
    png = tmp_path / "twelve.png"
    shown, times, evidence = explain(model, os.path.join(data, header), str(png), ["AF", "164889003", "PVC"])
    assert png.stat().st_size > 50_000 and len(shown) == 3
    assert len(times) > 100 and evidence.shape == (len(times), 26) and times.min() >= 0 and times.max() < 10.0
    reduced = tmp_path / "two"
    write_reduced_copy(data, str(reduced), ("I", "II"))
    png2 = tmp_path / "two.png"
    explain(model, str(reduced / header), str(png2))
    assert png2.stat().st_size > 20_000


def test_unknown_classes_are_named():
    with pytest.raises(ValueError, match="unknown class 'XYZ'"):
        resolve_classes(["XYZ"], ["164889003"], ["AF"])
    assert resolve_classes(["lbbb", "164889003"], ["733534002|164909002", "164889003"], ["CLBBB|LBBB", "AF"]) == [0, 1]
