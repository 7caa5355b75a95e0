"""The default optimizer of a gradual prune: AdamW decaying the weights whose scale the model's function sees."""
import importlib

import pytest
import torch
from torch import nn

import kdnb
from kdnb.engine.prune.schedule import decay
from kdnb.engine.prune.cut.masks import apply_masks


@pytest.fixture(scope="module")
def digits():
    return kdnb.datasets.load("digits", batch_size=256, seed=0)


def test_weights_that_feed_a_normalisation_are_not_decayed():
    net = kdnb.models.cnn_bn(width=4)
    chosen = decay.function_scaled_weights(net, torch.randn(2, 1, 8, 8))
    assert chosen == {id(net[-1].weight)}  # every conv feeds a BatchNorm; the classifier feeds nothing
    mlp = kdnb.models.mlp(6, [5], 3)
    assert decay.function_scaled_weights(mlp, torch.randn(2, 6)) == {id(m.weight) for m in mlp.modules()
                                                                   if isinstance(m, nn.Linear)}


def test_a_masked_weight_is_decayed_as_its_weight_orig_and_the_trace_leaves_batchnorm_alone():
    net = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3), nn.LayerNorm(3),
                        nn.Linear(3, 2))
    apply_masks(net, {"5.weight": torch.ones(2, 3, dtype=torch.bool)})
    before = net[1].running_mean.clone(), int(net[1].num_batches_tracked)
    assert decay.function_scaled_weights(net, torch.randn(4, 6)) == {id(net[5].weight_orig)}
    assert torch.equal(net[1].running_mean, before[0]) and int(net[1].num_batches_tracked) == before[1]
    assert net.training


def test_the_factory_decays_only_the_chosen_weights():
    net = kdnb.models.mlp(6, [5], 3)
    optimizer = decay.adamw(net, torch.randn(2, 6), lr=0.01, weight_decay=0.7)(net.parameters())
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == 0.01
    decayed, plain = optimizer.param_groups
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert decayed["weight_decay"] == 0.7 and {id(p) for p in decayed["params"]} == {id(m.weight) for m in linears}
    assert plain["weight_decay"] == 0.0 and all(p.dim() == 1 for p in plain["params"])  # the biases


@pytest.fixture
def optimizers(monkeypatch):
    """The optimizer each fine-tuning run of prune builds, recorded from the one loop's ``fit``."""
    loop = importlib.import_module("kdnb.engine.loop")
    built, fit = [], loop.fit

    def recording(model, *args, optimizer=None, lr=1e-3, **kwargs):
        built.append(loop.make_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad], lr))
        return fit(model, *args, optimizer=optimizer, lr=lr, **kwargs)
    monkeypatch.setattr(loop, "fit", recording)
    return built


def test_a_long_agp_fine_tunes_with_decoupled_decay_and_the_others_with_adam(digits, optimizers):
    train, _ = digits
    net = kdnb.models.mlp(64, [16], 10)
    kdnb.prune(net, 0.95, data=train, finetune=decay.FROM_EPOCHS, steps=2, lr=0.01)  # "auto": agp
    kdnb.prune(net, 0.5, data=train, finetune=decay.FROM_EPOCHS)  # "auto": one shot
    kdnb.prune(net, 0.95, data=train, finetune=decay.FROM_EPOCHS, steps=2, weight_decay=0)
    kdnb.prune(net, 0.95, data=train, finetune=decay.FROM_EPOCHS - 1, steps=2)  # a short agp: nothing to regularise
    agp, oneshot, undecayed, short = optimizers
    assert isinstance(agp, torch.optim.AdamW) and agp.param_groups[0]["weight_decay"] == decay.WEIGHT_DECAY
    assert agp.param_groups[0]["lr"] == 0.01 and len(agp.param_groups[0]["params"]) == 2  # the two weights
    assert type(oneshot) is type(undecayed) is type(short) is torch.optim.Adam


def test_a_users_optimizer_is_used_as_given(digits, optimizers):
    train, _ = digits
    kdnb.prune(kdnb.models.mlp(64, [16], 10), 0.95, data=train, finetune=1, steps=2,
               optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    assert type(optimizers[0]) is torch.optim.SGD


def test_decay_in_one_shot_fine_tuning_when_asked(digits, optimizers):
    train, _ = digits
    kdnb.prune(kdnb.models.mlp(64, [16], 10), 0.5, data=train, finetune=1, weight_decay=0.1)
    assert isinstance(optimizers[0], torch.optim.AdamW) and optimizers[0].param_groups[0]["weight_decay"] == 0.1


def test_by_default_only_a_long_agp_of_a_model_without_normalisation_is_decayed():
    mlp, bn = kdnb.models.mlp(6, [5], 3), kdnb.models.cnn_bn(width=4)
    assert decay.default(mlp, "agp", decay.FROM_EPOCHS) == decay.WEIGHT_DECAY
    assert decay.default(mlp, "agp", decay.FROM_EPOCHS - 1) == decay.default(mlp, "oneshot", 20) == 0
    assert decay.default(bn, "agp", 20) == 0  # only its classifier would be decayed: it cost accuracy
