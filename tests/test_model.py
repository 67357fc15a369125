import pytest
import torch

from ecgmamba.model import (
    BiMamba,
    ECGMamba,
    ModelConfig,
    count_flops,
    count_parameters,
    preset_config,
    stem_output_length,
)
from ecgmamba.selective_scan import selective_scan_ref


def tiny_config(**overrides):
    base = dict(num_leads=12, num_classes=5, num_samples=512, d_model=16, depth=2, d_state=4, stem_channels=8,
                stem_paddings=(2, 7), drop_path=0.0)
    return ModelConfig(**{**base, **overrides})


def reference_branch(mixer, x, z, suffix):
    """One SSM direction written out with the reference scan and explicit weights."""
    conv = getattr(mixer, "conv1d" + suffix)
    x_proj = getattr(mixer, "x_proj" + suffix)
    dt_proj = getattr(mixer, "dt_proj" + suffix)
    A_log = mixer.A_log if suffix == "" else mixer.A_b_log
    D = getattr(mixer, "D" + suffix)
    length = x.shape[-1]
    x = torch.nn.functional.silu(
        torch.nn.functional.conv1d(x, conv.weight, conv.bias, padding=mixer.d_conv - 1, groups=x.shape[1])[..., :length]
    )
    dbl = x.transpose(1, 2) @ x_proj.weight.t()
    dt, B, C = dbl.split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
    delta = (dt @ dt_proj.weight.t()).transpose(1, 2)
    return selective_scan_ref(x, delta, -torch.exp(A_log), B.transpose(1, 2), C.transpose(1, 2), D, z=z,
                              delta_bias=dt_proj.bias, delta_softplus=True)


def test_paper_preset_gives_729_tokens():
    config = preset_config("paper")
    assert stem_output_length(config) == 729
    model = ECGMamba(preset_config("paper", depth=1)).eval()  # the paper's stem and width; one block for speed
    with torch.no_grad():
        tokens = model.stem(torch.zeros(1, 12, 8192))
    assert tokens.shape == (1, 384, 729)
    seen = []
    model.layers[0].register_forward_hook(lambda module, args, output: seen.append(output[0].shape))
    with torch.no_grad():
        logits = model(torch.randn(1, 12, 8192))
    assert seen == [(1, 730, 384)] and logits.shape == (1, 26)  # 729 tokens + the class token


def test_bidirectional_block_is_forward_plus_flipped_backward():
    torch.manual_seed(0)
    mixer = BiMamba(d_model=8, d_state=4, divide_out=True).double()
    for p in mixer.parameters():  # make the two directions' weights clearly different
        p.data += 0.1 * torch.randn_like(p)
    h = torch.randn(2, 13, 8, dtype=torch.float64)
    xz = (h @ mixer.in_proj.weight.t()).transpose(1, 2)
    x, z = xz.chunk(2, dim=1)
    forward = reference_branch(mixer, x, z, "")
    backward = reference_branch(mixer, x.flip(-1), z.flip(-1), "_b").flip(-1)
    expected = ((forward + backward) / 2).transpose(1, 2) @ mixer.out_proj.weight.t()
    torch.testing.assert_close(mixer(h), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("padded", [False, True])
def test_the_scan_and_the_conv_get_time_at_stride_one_in_both_directions(monkeypatch, padded):
    """mamba-ssm's interface copies any u, delta or z whose last stride is not 1 (and causal-conv1d any x with
    neither of its last two strides 1), so the block hands them over with time at stride 1, in both directions."""
    import ecgmamba.model as model

    seen = []
    real_scan, real_conv = model.selective_scan_fn, model.causal_conv1d_silu

    def scan(u, delta, A, B, C, D=None, z=None, **kwargs):
        seen.append(("scan", u.stride(-1), delta.stride(-1), z.stride(-1), B.stride(-1), C.stride(-1)))
        return real_scan(u, delta, A, B, C, D, z=z, **kwargs)

    def conv(x, weight, bias):
        seen.append(("conv", x.stride(-1)))
        return real_conv(x, weight, bias)

    monkeypatch.setattr(model, "selective_scan_fn", scan)
    monkeypatch.setattr(model, "causal_conv1d_silu", conv)
    mixer = BiMamba(d_model=8, d_state=4)
    h = torch.randn(3, 11, 8, requires_grad=True)
    lengths = torch.tensor([11, 7, 4]) if padded else None
    mixer(h, lengths).sum().backward()
    assert seen == [("conv", 1), ("scan", 1, 1, 1, 1, 1)] * 2
    assert h.grad is not None and torch.isfinite(h.grad).all()


def test_late_input_reaches_earlier_positions_only_through_backward_branch():
    torch.manual_seed(1)
    mixer = BiMamba(d_model=8, d_state=4).double()
    h = torch.randn(1, 20, 8, dtype=torch.float64)
    h2 = h.clone()
    h2[:, 17] += 1.0  # change near the end
    xz, xz2 = [(t @ mixer.in_proj.weight.t()).transpose(1, 2) for t in (h, h2)]
    (x, z), (x2, z2) = xz.chunk(2, dim=1), xz2.chunk(2, dim=1)
    position = 10
    fwd, fwd2 = mixer.branch(x, z, "forward"), mixer.branch(x2, z2, "forward")
    torch.testing.assert_close(fwd[..., : position + 1], fwd2[..., : position + 1], rtol=0, atol=0)
    bwd = mixer.branch(x.flip(-1), z.flip(-1), "backward").flip(-1)
    bwd2 = mixer.branch(x2.flip(-1), z2.flip(-1), "backward").flip(-1)
    assert (bwd[..., position] - bwd2[..., position]).abs().max() > 1e-6
    assert (mixer(h)[:, position] - mixer(h2)[:, position]).abs().max() > 1e-6


@pytest.mark.parametrize("num_leads", range(1, 13))
def test_any_lead_count(num_leads):
    model = ECGMamba(tiny_config(num_leads=num_leads)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, num_leads, 512))
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("cls_token, pooling", [("middle", "mean"), ("end", "mean"), ("none", "mean"),
                                                ("none", "mean+max"), ("none", "concat"),
                                                ("none", "stats")])
def test_class_token_positions_and_backward(cls_token, pooling):
    torch.manual_seed(0)
    model = ECGMamba(tiny_config(cls_token=cls_token, pooling=pooling, divide_out=cls_token != "end"))
    out = model(torch.randn(3, 12, 512))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    tokens = model.num_tokens
    expected = {"middle": tokens // 2, "end": tokens, "none": None}[cls_token]
    assert model.token_position(tokens) == expected
    # The feature the head sees is the final norm's output at the class token (or the mean without one).
    final = []
    model.norm_f.register_forward_hook(lambda module, args, output: final.append(output))
    model.eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 12, 512))
    normed = final[-1]
    assert normed.shape[1] == tokens + (cls_token != "none")
    if expected is not None:
        torch.testing.assert_close(features, normed[:, expected])
    else:
        pooled = {"mean": normed.mean(1), "mean+max": 0.5 * (normed.mean(1) + normed.amax(1)),
                  "concat": torch.cat([normed.mean(1), normed.amax(1)], dim=-1),
                  "stats": torch.cat([normed.mean(1), normed.amax(1), normed.std(1, unbiased=False)], dim=-1)}[pooling]
        torch.testing.assert_close(features, pooled)


def test_whole_model_is_bidirectional():
    """A change in the second half of the record reaches the middle class token only through the backward
    branches: with them silenced, the feature is unchanged (the test can fail), with them, it changes."""
    torch.manual_seed(2)
    model = ECGMamba(tiny_config(cls_token="middle")).double().eval()
    x = torch.randn(1, 12, 512, dtype=torch.float64)
    x2 = x.clone()
    x2[..., 300:340] += 1.0  # stem tokens 23 and later; the class token sits at 21
    with torch.no_grad():
        assert (model.forward_features(x) - model.forward_features(x2)).abs().max() > 1e-3
        for layer in model.layers:
            branch = layer.mixer.branch
            layer.mixer.branch = (lambda original: lambda x, z, direction: (
                original(x, z, direction) * (direction == "forward")))(branch)
        torch.testing.assert_close(model.forward_features(x), model.forward_features(x2), rtol=0, atol=0)


def test_other_window_lengths_interpolate_position_embedding():
    model = ECGMamba(tiny_config()).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 12, 777)).shape == (1, 5)


def test_wrong_input_shape_is_a_clear_error():
    model = ECGMamba(tiny_config(num_leads=2))
    with pytest.raises(ValueError, match="expected input"):
        model(torch.randn(1, 12, 512))


def test_parameter_names_match_vim():
    names = set(dict(ECGMamba(tiny_config()).named_parameters()))
    for name in ("A_log", "A_b_log", "D", "D_b", "conv1d.weight", "conv1d_b.weight", "x_proj.weight",
                 "x_proj_b.weight", "dt_proj.bias", "dt_proj_b.bias", "in_proj.weight", "out_proj.weight"):
        assert f"layers.0.mixer.{name}" in names
    assert {"layers.0.norm.weight", "norm_f.weight", "head.weight", "pos_embed", "cls_token"} <= names


def test_config_round_trip_and_unknown_keys():
    config = preset_config("small", num_leads=3)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"d_modle": 3})
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("huge")
    with pytest.raises(ValueError, match="pooling must be"):
        ECGMamba(tiny_config(cls_token="none", pooling="max"))
    # A model description saved before `pooling` existed loads as mean pooling, as it was trained.
    old = preset_config("small").to_dict()
    del old["pooling"]
    assert ModelConfig.from_dict(old).pooling == "mean"


def test_presets_parameter_counts_and_flops():
    small = preset_config("small")
    assert 0.5e6 < count_parameters(ECGMamba(small)) < 2e6
    paper = ECGMamba(preset_config("paper"))
    assert 25e6 < count_parameters(paper) < 27e6
    assert count_flops(small) > 2 * count_parameters(ECGMamba(small))


def test_package_exports_selective_scan_fn():
    from ecgmamba import selective_scan_fn
    from ecgmamba.selective_scan import selective_scan_fn as direct

    assert selective_scan_fn is direct


def _cuda_kernels_available():
    from ecgmamba.selective_scan import load_mamba_selective_scan

    return torch.cuda.is_available() and load_mamba_selective_scan() is not None


@pytest.mark.skipif(not _cuda_kernels_available(), reason="needs CUDA and mamba-ssm with its CUDA extension")
@pytest.mark.parametrize("cls_token", ["middle", "none"])
def test_whole_model_cuda_kernels_match_cpu_on_the_same_weights(cls_token):
    """One set of weights: the CPU path (fused numba scan, F.conv1d) and the CUDA path (mamba-ssm's scan,
    causal_conv1d when installed) give the same probabilities, in float32 and under bf16 autocast."""
    torch.manual_seed(0)
    config = preset_config("small", num_classes=26, cls_token=cls_token, depth=2)
    cpu_model = ECGMamba(config).eval()
    gpu_model = ECGMamba(config).eval()
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.cuda()
    x = torch.randn(4, 12, config.num_samples)
    with torch.no_grad():
        p_cpu = torch.sigmoid(cpu_model(x))
        p_gpu = torch.sigmoid(gpu_model(x.cuda())).cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            p_bf16 = torch.sigmoid(gpu_model(x.cuda()).float()).cpu()
    assert (p_cpu - p_gpu).abs().max() < 1e-4
    assert (p_cpu - p_bf16).abs().max() < 5e-2


def test_zero_padding_of_a_short_record_is_not_pooled():
    from ecgmamba.model import token_centres

    torch.manual_seed(0)
    config = ModelConfig(num_samples=512, d_model=16, depth=2, d_state=4, stem_channels=8, stem_paddings=(2, 7),
                         cls_token="none", pooling="mean+max")
    model = ECGMamba(config).eval()
    x = torch.randn(2, 12, 512)
    x[0, :, 300:] = 0.0  # a 300-sample record padded to the window
    valid = torch.tensor([300, 512])
    with torch.no_grad():
        pooled = model.forward_features(x, valid)
        tokens, _ = model.token_features(x, valid)
        keep = torch.as_tensor(token_centres(config, tokens.shape[1]) < 300)
        short = tokens[0, keep]
        torch.testing.assert_close(pooled[0], 0.5 * (short.mean(0) + short.amax(0)))
        torch.testing.assert_close(pooled[1], 0.5 * (tokens[1].mean(0) + tokens[1].amax(0)), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(model(x, valid)[0], model(x)[0])  # the padding was in the pool before
        off = ECGMamba(ModelConfig(**{**config.to_dict(), "stem_kernels": (14, 15), "stem_strides": (3, 4),
                                      "stem_paddings": (2, 7), "mask_padding": False})).eval()
        off.load_state_dict(model.state_dict())
        torch.testing.assert_close(off(x, valid), model(x))  # mask_padding=False: the old behaviour


def test_reversal_index_reverses_each_rows_own_tokens_and_is_its_own_inverse():
    from ecgmamba.model import reversal_index

    index = reversal_index(torch.tensor([5, 3, 1]), 5)
    assert index.tolist() == [[4, 3, 2, 1, 0], [2, 1, 0, 3, 4], [0, 1, 2, 3, 4]]
    x = torch.randn(3, 5)
    torch.testing.assert_close(x.gather(1, index).gather(1, index), x, rtol=0, atol=0)


def test_a_short_records_answer_does_not_depend_on_its_padding():
    """The backward scan reads a record's own tokens before its padding, so however much zero padding a short
    record carries (to the window, or to a longer batch-mate), its logits are the same."""
    torch.manual_seed(0)
    config = ModelConfig(num_samples=512, d_model=16, depth=2, d_state=4, stem_channels=8, stem_paddings=(2, 7),
                         cls_token="none", pooling="stats", position="none")
    model = ECGMamba(config).eval()
    record = torch.randn(1, 12, 300)
    answers = []
    with torch.no_grad():
        for padded in (512, 700, 1500):
            x = torch.zeros(2, 12, padded)
            x[0, :, :300] = record[0]
            x[1] = torch.randn(12, padded)  # a full-length batch-mate
            answers.append(model(x, torch.tensor([300, padded]))[0])
        for other in answers[1:]:
            torch.testing.assert_close(other, answers[0], rtol=1e-5, atol=1e-5)
        # A plain flip would start the backward scan in the padding and change the record's own tokens.
        features, _ = model.token_features(x, torch.tensor([300, 1500]))
        plain, _ = model.token_features(x)
        own = model.valid_tokens(torch.tensor([300, 1500]), features.shape[1], "cpu")[0]
        assert (features[0, own] - plain[0, own]).abs().max() > 1e-4


def test_a_hidden_layer_head_pools_the_same_way_and_round_trips_its_config():
    torch.manual_seed(0)
    config = ModelConfig(num_samples=512, d_model=16, depth=1, d_state=4, stem_channels=8, stem_paddings=(2, 7),
                         cls_token="none", pooling="stats", position="none", head_hidden=32)
    model = ECGMamba(config).eval()
    assert [type(m) for m in model.head] == [torch.nn.Linear, torch.nn.GELU, torch.nn.Linear]
    assert model.head[0].in_features == 48 and model.head[2].out_features == config.num_classes
    x = torch.randn(2, 12, 600)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.head(model.forward_features(x)))
        features, _ = model.token_features(x)
        assert model.token_logits(features).shape == (2, features.shape[1], config.num_classes)
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_an_ensemble_answers_the_logit_of_its_members_mean_probability_even_where_they_saturate():
    from ecgmamba.model import AveragedNetworks, network_for

    torch.manual_seed(0)
    config = tiny_config()
    members = [ECGMamba(config).eval() for _ in range(3)]
    ensemble = AveragedNetworks(members).eval()
    x, valid = torch.randn(2, 12, 512), torch.tensor([300, 512])
    with torch.no_grad():
        mean = torch.stack([m(x, valid).sigmoid() for m in members]).mean(0)
        torch.testing.assert_close(ensemble(x, valid).sigmoid(), mean)
        for member in members:  # one member sure, one sure of the opposite: the mean is near 1/2, not NaN
            member.head.bias.zero_()
        members[0].head.bias.fill_(60.0)
        members[1].head.bias.fill_(-60.0)
        answer = ensemble(x, valid).sigmoid()
    assert torch.isfinite(answer).all() and ((answer - 0.5).abs() < 1 / 3 + 1e-4).all()
    assert ensemble.config == config and isinstance(network_for(config), ECGMamba)
    assert len(network_for(config, 2).members) == 2
    with pytest.raises(ValueError, match="one configuration"):
        AveragedNetworks([ECGMamba(config), ECGMamba(tiny_config(num_leads=2))])
