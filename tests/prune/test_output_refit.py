"""The output layer re-solved for the dense model's predictions: the divergence against its formula, never worse
than least squares or masking, masks kept, only where the layer's outputs are the model's, and only in a prune's
last cut."""
import importlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kdnb
from kdnb.engine.prune import prune
from kdnb.engine.prune.schedule import schedules
from kdnb.engine.prune.rebuild.output_refit import output_data, prediction_divergence, refit_output
from kdnb.engine.prune.rebuild.reconstruct import reconstruct
from kdnb.engine.prune.cut.masks import apply_masks, clone


def test_prediction_divergence_is_the_mean_kl_of_the_softmaxes():
    dense = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # p = (1/4, 3/4), (1/2, 1/2)
    pruned = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])  # q = (1/2, 1/2), (1/4, 3/4)
    first = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    second = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(prediction_divergence(pruned, dense)) == pytest.approx((first + second) / 2, rel=1e-6)
    assert float(prediction_divergence(dense, dense)) == pytest.approx(0.0, abs=1e-7)


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 5), st.integers(2, 8), st.integers(4, 40), st.floats(0.1, 0.9), st.integers(0, 10**6))
def test_refit_never_ends_above_least_squares_or_masking_and_keeps_the_mask(out, inputs, rows, sparsity, seed):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(rows, inputs, generator=generator, dtype=torch.float64)
    dense = torch.randn(out, inputs, generator=generator, dtype=torch.float64)
    target = a @ dense.T
    keep = torch.rand(out, inputs, generator=generator) >= sparsity
    start = torch.randn(out, inputs, generator=generator, dtype=torch.float64) * keep
    masked = (dense * keep, torch.zeros(out, dtype=torch.float64))
    bias, bias_keep = torch.zeros(out, dtype=torch.float64), torch.ones(out, dtype=torch.bool)
    weight, new_bias = refit_output(start, bias, keep, bias_keep, a, target, masked)
    after = float(prediction_divergence(a @ weight.T + new_bias, target))
    assert after <= float(prediction_divergence(a @ start.T, target)) + 1e-12
    assert after <= float(prediction_divergence(a @ masked[0].T, target)) + 1e-12
    assert bool((weight[~keep] == 0).all())


def _data(inputs: int, classes: int, samples: int = 256) -> DataLoader:
    torch.manual_seed(0)
    x = torch.randn(samples, inputs)
    return DataLoader(TensorDataset(x, torch.randint(0, classes, (samples,))), batch_size=64)


def test_reconstruct_moves_the_output_layer_to_the_dense_predictions_only_where_it_gives_the_models_outputs():
    torch.manual_seed(0)
    dense = kdnb.models.mlp(8, [16], 4)
    data = _data(8, 4)
    masked = clone(dense)
    apply_masks(masked, {"3.weight": torch.rand(4, 16) > 0.7, "1.weight": torch.rand(16, 8) > 0.5})
    squares = reconstruct(clone(masked), dense, data, predictions=False)
    refit = reconstruct(clone(masked), dense, data)
    x = next(iter(data))[0]
    with torch.no_grad():
        assert float(prediction_divergence(refit(x), dense(x))) < float(prediction_divergence(squares(x), dense(x)))
    assert torch.equal(refit[1].weight, squares[1].weight)  # the hidden layer: least squares in both
    assert bool((refit[3].weight[~refit[3].weight_mask.bool()] == 0).all())

    class Scaled(nn.Module):  # outputs that are not the last Linear's own: no distribution to match
        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * self.net(x)

    assert output_data(Scaled(masked), Scaled(dense), "net.3", [x]) is None
    assert output_data(masked, dense, "3", [x])[0].shape == (len(x), 16)


def test_an_output_layer_too_large_for_the_bounds_keeps_its_least_squares(monkeypatch):
    from kdnb.engine.prune.rebuild import output_refit

    torch.manual_seed(0)
    dense = kdnb.models.mlp(8, [16], 4)
    masked = clone(dense)
    apply_masks(masked, {"3.weight": torch.rand(4, 16) > 0.7})
    data = _data(8, 4)
    monkeypatch.setattr(output_refit, "MAX_MACS", 64 * 16 * 4 - 1)  # one batch of 64 rows is already too much
    bounded = reconstruct(clone(masked), dense, data)
    squares = reconstruct(clone(masked), dense, data, predictions=False)
    assert torch.equal(bounded[3].weight, squares[3].weight)


@pytest.fixture
def fits_asked(monkeypatch) -> list[bool]:
    """The ``predictions`` flag of each re-solve that `prune` asks for, in order."""
    from kdnb.engine.prune import pipeline

    calls = []
    real = pipeline.reconstruct_layers

    def spy(*args, predictions=True, **kwargs):
        calls.append(predictions)
        return real(*args, predictions=predictions, **kwargs)

    monkeypatch.setattr(pipeline, "reconstruct_layers", spy)
    return calls


def test_only_a_prunes_last_cut_fits_the_predictions(fits_asked):
    net = kdnb.models.mlp(8, [16, 16], 4)
    prune(net, 0.5, structured=True, scope="local", data=_data(8, 4), rounds=3)
    assert fits_asked == [False, False, True]


def test_an_obs_n_m_prune_fits_the_output_layer_once_on_its_reselected_mask(monkeypatch):
    module = importlib.import_module("kdnb.engine.prune.rebuild.reconstruct")  # the module, not the function
    fitted = []
    real = module.refit_output

    def spy(weight, bias, keep, *args, **kwargs):
        fitted.append(keep.clone())
        return real(weight, bias, keep, *args, **kwargs)

    monkeypatch.setattr(module, "refit_output", spy)
    net = kdnb.models.mlp(8, [16], 4)
    result = prune(net, 0.5, criterion="obs", pattern="2:4", data=_data(8, 4))
    assert len(fitted) == 1 and torch.equal(fitted[0], result.masks["3.weight"])


def test_a_prune_that_fine_tunes_long_keeps_the_least_squares_output_layer(fits_asked):
    for epochs in (1, schedules.RESOLVE_BELOW):
        prune(kdnb.models.mlp(8, [16], 4), 0.5, data=_data(8, 4), finetune=epochs, schedule="oneshot")
    assert fits_asked == [True, False]  # long fine-tuning recovers less from the fitted layer (bench/prune_sparsity.py)
    result = prune(kdnb.models.mlp(8, [16], 4), 0.5, data=_data(8, 4), reconstruct="least_squares")
    assert fits_asked == [True, False, False] and result.reconstructed  # least squares only, on request
