"""Training memory: activation checkpointing (same numbers, far fewer kept tensors) and the probe that decides it."""

import pytest
import torch

import ecgmamba.model as model_module
from ecgmamba.model import ECGMamba, preset_config
from ecgmamba.train import TrainConfig, activation_bytes, load_train_config, wants_activation_checkpointing


def small_model(**overrides):
    torch.manual_seed(0)
    config = preset_config("small", **{"num_classes": 5, "depth": 2, "d_model": 16, "stem_channels": 8,
                                       "num_samples": 512, "drop_path": 0.3, **overrides})
    return ECGMamba(config)


def kept_bytes(model, signal):
    """Bytes of the distinct storages autograd keeps for backward in one forward pass."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(signal)
    return sum(storages.values())


def loss_and_gradients(model, signal, valid, recompute):
    model.activation_checkpointing = recompute
    model.zero_grad()
    torch.manual_seed(1)  # the same drop-path draws for both runs
    logits = model(signal, valid)
    logits.square().sum().backward()
    return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("valid", [None, torch.tensor([512, 300, 90])])
def test_checkpointed_blocks_give_the_same_logits_and_gradients(valid):
    model = small_model().train()
    signal = torch.randn(3, 12, 512)
    logits, gradients = loss_and_gradients(model, signal, valid, False)
    logits_again, gradients_again = loss_and_gradients(model, signal, valid, True)
    assert torch.equal(logits, logits_again)  # drop-path replays its draws in the recomputation
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradients_again[name], gradient, rtol=0, atol=1e-7, msg=name)


def test_checkpointing_keeps_a_fraction_of_the_activations_and_only_while_training(monkeypatch):
    model = small_model(depth=4).train()
    signal = torch.randn(2, 12, 512)
    kept = kept_bytes(model, signal)
    model.activation_checkpointing = True
    assert kept_bytes(model, signal) < 0.3 * kept
    model.eval()
    calls, real = [], model_module.checkpoint
    monkeypatch.setattr(model_module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():  # inference never goes through the checkpoint wrapper
        model(signal)
    assert calls == []


def test_the_probe_counts_per_window_bytes_and_leaves_the_model_as_it_was():
    model = small_model().train()
    model.activation_checkpointing = True
    before = {name: t.detach().clone() for name, t in model.state_dict().items()}
    per_window, per_step = activation_bytes(model, 12, 512, torch.device("cpu"), "fp32")
    assert per_window > 0
    assert model.training and model.activation_checkpointing
    for name, t in model.state_dict().items():  # BatchNorm statistics too
        assert torch.equal(t, before[name]), name
    model.activation_checkpointing = False
    counted = kept_bytes(model, torch.randn(4, 12, 512))
    assert abs(counted - (per_step + 4 * per_window)) < 0.05 * counted


def test_the_probe_sees_weights_cast_per_step_under_bf16():
    per_window, per_step = activation_bytes(small_model(), 12, 512, torch.device("cpu"), "bf16")
    assert per_window > 0 and per_step > 0  # the bf16 copies of the weights, once per step whatever the batch


def test_auto_turns_checkpointing_on_only_when_the_activations_would_crowd_the_device():
    gib = 2**30
    # paper on an H200 (measured 0.95 GiB per window, batch 32, 140 GiB free): off; on a 16 GB T4: on
    assert not wants_activation_checkpointing("auto", 0.95 * gib, 0.05 * gib, 32, 140 * gib)
    assert wants_activation_checkpointing("auto", 0.95 * gib, 0.05 * gib, 32, 15 * gib)
    assert wants_activation_checkpointing("on", 1, 0, 1, 100 * gib)
    assert not wants_activation_checkpointing("off", gib, 0, 64, gib)


def test_the_setting_is_checked_and_read_from_the_environment(tmp_path):
    with pytest.raises(ValueError, match="activation_checkpointing"):
        TrainConfig(activation_checkpointing="sometimes").resolved()
    assert TrainConfig().resolved().activation_checkpointing == "auto"
    config = load_train_config(str(tmp_path), {"ECGMAMBA_ACTIVATION_CHECKPOINTING": "on"})
    assert config.resolved().activation_checkpointing == "on"
