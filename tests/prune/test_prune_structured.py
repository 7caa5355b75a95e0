"""Structured pruning: channels deleted with their coupled layers, on MLPs, BN CNNs, residual and
depthwise nets and random small architectures; the classifier kept; BatchNorm folding exact."""
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import kdnb
from kdnb.errors import KdnbError
from kdnb.engine.measure import measure
from kdnb.engine.prune import fold_batchnorm, importance, masks_at, prune
from kdnb.engine.prune.graph.groups import prunable_weights

M = kdnb.models


def _weights(model):
    return sum(w.numel() for w in prunable_weights(model).values())


def _macs(model, x):
    return measure(model, x, repeats=1, warmup=0).macs


CASES = {
    "mlp": (lambda: M.mlp(16, [32, 24], 5), (4, 16)),
    "cnn_bn": (lambda: M.cnn_bn(5, width=8), (2, 1, 8, 8)),
    "resnet_small": (lambda: M.resnet_small(5, width=4, blocks=1), (2, 1, 8, 8)),
    "mobile_cnn": (lambda: M.mobile_cnn(5, width=8), (2, 1, 8, 8)),
    "cnn1d": (lambda: M.cnn1d(5, width=8, length=16), (2, 1, 16)),
}


@pytest.mark.parametrize("name", CASES)
def test_structured_pruning_deletes_channels_and_keeps_outputs(name):
    make, shape = CASES[name]
    torch.manual_seed(0)
    net, x = make().eval(), torch.randn(shape)
    result = prune(net, 0.5, structured=True, example=x)
    small = result.model.eval()
    out = small(x)
    assert out.shape == net(x).shape and bool(torch.isfinite(out).all())
    assert result.sparsity >= 0.5 and result.sparsity == pytest.approx(1 - _weights(small) / _weights(net))
    assert result.sparsity < 0.65  # channels are added one by one until the target is reached
    assert _macs(small, x) < 0.75 * _macs(net, x)
    assert result.channels and result.masks == {}


def test_residual_branches_lose_the_same_channels():
    torch.manual_seed(0)
    net = M.resnet_small(5, width=4, blocks=2)
    small = prune(net, 0.6, structured=True, example=torch.randn(2, 1, 8, 8), scope="local").model
    for block in (small[3], small[4]):  # the two blocks of stage one share the stem's channels
        assert block.body[4].num_features == small[1].num_features


def test_depthwise_conv_keeps_in_equal_out():
    torch.manual_seed(0)
    small = prune(M.mobile_cnn(5, width=8), 0.5, structured=True, example=torch.randn(2, 1, 8, 8)).model
    for conv in (small[3], small[9]):
        assert conv.groups == conv.in_channels == conv.out_channels < 16


def test_classifier_outputs_are_kept_even_at_high_sparsity():
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = prune(M.mlp(16, [8], 5), 0.95, structured=True, example=torch.randn(2, 16))
    assert result.model[3].out_features == 5 and result.model[1].out_features == 1
    assert any("keeps 1 of 8" in str(w.message) or "at most sparsity" in str(w.message) for w in caught)


@pytest.mark.parametrize("criterion", ["taylor", "hessian", "slimming", "random"])
def test_data_criteria_prune_structured(criterion):
    train, _ = kdnb.datasets.load("synthetic", batch_size=64, seed=0, num_samples=256)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    result = prune(net, 0.4, criterion=criterion, structured=True, data=train, slimming_epochs=1)
    assert result.sparsity >= 0.4 and result.model[0].out_features < 16
    assert result.model[1].num_features == result.model[0].out_features == result.model[3].in_features


def test_taylor_scores_include_batchnorm():
    train, _ = kdnb.datasets.load("synthetic", batch_size=64, seed=0, num_samples=128)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 4))
    with_bn = importance(net, "taylor", train, structured=True).channels["0"]
    net[1].weight.data.zero_()
    net[1].bias.data.zero_()  # BN scale and shift now contribute nothing (w = 0)
    without_bn = importance(net, "taylor", train, structured=True).channels["0"]
    assert not torch.allclose(with_bn, without_bn)


def test_structured_masks_equal_physical_removal():
    torch.manual_seed(0)
    net, x = M.cnn_bn(5, width=8).eval(), torch.randn(2, 1, 8, 8)
    scores = importance(net, "l1", structured=True, example=x)
    masked = kdnb.engine.prune.cut.masks.clone(net)
    with torch.no_grad():
        for name, mask in masks_at(scores, 0.5).items():
            masked.get_parameter(name).mul_(mask)
    removed = prune(net, 0.5, structured=True, example=x).model.eval()
    assert torch.allclose(masked(x), removed(x), atol=1e-5)


def test_fold_batchnorm_computes_the_same_function():
    torch.manual_seed(0)
    net, x = M.resnet_small(5, width=4, blocks=1), torch.randn(4, 1, 8, 8)
    labels = torch.tensor([0, 1, 2, 3])
    kdnb.train(net, [(x, labels)], epochs=2, device="cpu", progress=False)  # non-trivial running stats
    folded = fold_batchnorm(kdnb.engine.prune.cut.masks.clone(net))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(net.eval()(x), folded(x), atol=1e-5)


class _Gate(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * self.scale[:, None]


@pytest.mark.parametrize("make_layer", [lambda: _Gate(8), lambda: nn.Conv1d(8, 8, 1, groups=2)],
                         ids=["own-parameter", "grouped"])
def test_parameters_owned_by_a_module_and_grouped_convs_are_pruned(make_layer):
    """Once refused: a module's own parameter is an unwrapped parameter to Torch-Pruning (narrowed with its
    channels); a grouped conv loses the same positions in every group, so masking equals deleting."""
    torch.manual_seed(0)  # the layers made here, after the seed: the same weights whatever ran before
    layer = make_layer()
    net = nn.Sequential(nn.Conv1d(1, 8, 3), layer, nn.Flatten(), nn.LazyLinear(3))
    x = torch.randn(2, 1, 6)
    net(x)
    net = kdnb.engine.prune.cut.masks.clone(net)  # materialise the lazy layer
    scores = importance(net, "l1", structured=True, example=x)
    masked = kdnb.engine.prune.cut.masks.clone(net)
    with torch.no_grad():
        for name, mask in masks_at(scores, 0.4).items():
            masked.get_parameter(name).mul_(mask)
    small = prune(net, 0.4, structured=True, example=x).model
    assert small[0].out_channels < 8 and torch.allclose(masked(x), small(x), atol=1e-5)
    if isinstance(layer, nn.Conv1d):
        assert small[1].groups == 2 and small[1].in_channels % 2 == 0


@pytest.mark.parametrize("layer, message", [
    (nn.LSTM(8, 8, batch_first=True), "recurrent layer '1' (LSTM)"),
    (nn.ConvTranspose1d(8, 8, 1, groups=2), "layer '1' (ConvTranspose1d, transposed, groups=2)"),
])
def test_unsupported_layer_is_a_clear_error(layer, message):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Conv1d(1, 8, 3), layer, nn.Linear(8, 3)])

        def forward(self, x):
            x = self.layers[0](x)
            x = self.layers[1](x.transpose(1, 2))[0] if isinstance(layer, nn.LSTM) else self.layers[1](x).transpose(1, 2)
            return self.layers[2](x[:, -1])
    net = Net()
    with pytest.raises(KdnbError, match="does not") as error:
        prune(net, 0.5, structured=True, example=torch.randn(1, 1, 6))
    assert message.replace("'1'", "'layers.1'") in str(error.value) and "\n" not in str(error.value)
    assert prune(net, 0.5).sparsity == pytest.approx(0.5, abs=0.01)  # unstructured handles any layer


@st.composite
def architectures(draw):
    conv = draw(st.booleans())
    widths = draw(st.lists(st.integers(2, 12), min_size=1, max_size=3))
    norm, residual = draw(st.booleans()), draw(st.booleans())
    layers, width = [], 3
    for i, w in enumerate(widths):
        block = [nn.Conv2d(width, w, 3, padding=1) if conv else nn.Linear(width, w)]
        block += [nn.BatchNorm2d(w) if conv else nn.BatchNorm1d(w)] if norm else []
        block += [nn.ReLU()]
        if residual and width == w:
            layers.append(M.Residual(nn.Sequential(*block[:-1])))
        else:
            layers += block
        width = w
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if conv else []
    return nn.Sequential(*layers, *head, nn.Linear(width, 4)), (2, 3, 5, 5) if conv else (2, 3)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(architectures(), st.floats(0.0, 0.9), st.sampled_from(["global", "local"]))
def test_random_architectures_stay_valid(arch, sparsity, scope):
    make_net, shape = arch
    torch.manual_seed(0)
    net, x = make_net.eval(), torch.randn(shape)
    expected = net(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small layers hit "keeps 1 channel" / "at most sparsity"
        result = prune(net, sparsity, structured=True, scope=scope, example=x)
    out = result.model.eval()(x)
    assert out.shape == expected.shape and bool(torch.isfinite(out).all())
    assert result.sparsity == pytest.approx(1 - _weights(result.model) / _weights(net))
    assert torch.equal(net(x), expected)  # the original is untouched


def test_export_folds_masks_and_batchnorm_and_keeps_the_function():
    torch.manual_seed(0)
    net, x = M.cnn_bn(5, width=8), torch.randn(4, 1, 8, 8)
    kdnb.train(net, [(x, torch.tensor([0, 1, 2, 3]))], epochs=1, device="cpu", progress=False)
    result = prune(net, 0.6)
    fast = result.export()
    assert not any(isinstance(m, nn.BatchNorm2d) or m._forward_pre_hooks for m in fast.modules())
    assert fast[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(result.model.eval()(x), fast(x), atol=1e-5)
    assert torch.equal(net.eval()(x), result.dense.eval()(x))  # export copies; nothing else changes


def _digits_mlp(hidden=(32, 32)):
    train, val = kdnb.datasets.load("digits", batch_size=128, seed=0)
    torch.manual_seed(0)
    net = M.mlp(64, list(hidden), 10)
    kdnb.train(net, train, epochs=2, lr=1e-2, device="cpu", progress=False, plot=False)
    return net.eval(), train, val


@pytest.mark.slow
def test_rounds_rescore_the_refit_network_and_reach_the_target(monkeypatch):
    from kdnb.engine.prune.score import criteria
    from kdnb.engine.prune.options import DEFAULT_ROUNDS

    net, train, val = _digits_mlp()
    seen = []  # the first layer's weights each round's criterion scored

    def spy(weight):
        if weight.shape == net[1].weight.shape:
            seen.append(weight.clone())
        return weight.abs()

    monkeypatch.setitem(criteria.REGISTRY, "spy", criteria.Criterion(name="spy", formula=spy, label="spy",
                                                                     colour="k", normalise=True))
    result = prune(net, 0.6, criterion="spy", structured=True, data=train, val=val, rounds=3)
    reached = [step["sparsity"] for step in result.trajectory]
    assert len(seen) == 3 and reached == sorted(reached) and reached[0] < 0.6 <= reached[-1] == result.sparsity
    assert 1 - reached[0] == pytest.approx((1 - reached[-1]) ** (1 / 3), abs=0.06)  # the same factor each round
    for before, after in zip(seen, seen[1:]):  # each round scores the model the last one left: its cuts at zero
        assert (after.abs().sum(1) == 0).sum() > (before.abs().sum(1) == 0).sum()
    default = prune(net, 0.6, structured=True, data=train, criterion="l1")
    assert len(default.trajectory) == DEFAULT_ROUNDS  # the default: rounds for a structured cut with the refit
    assert len(prune(net, 0.6, structured=True, data=train, reconstruct=False).trajectory) == 1
    assert len(prune(net, 0.6, data=train).trajectory) == 1  # single weights: one cut


@pytest.mark.slow
def test_random_cuts_once_by_default_as_its_rounds_would_all_cut_alike():
    net, train, _ = _digits_mlp()
    batches = torch.utils.data.DataLoader(train.dataset, batch_size=128)  # each round's calibration in one order
    once = prune(net, 0.6, criterion="random", structured=True, data=batches)
    rounds = prune(net, 0.6, criterion="random", structured=True, data=batches, rounds=3)
    assert len(once.trajectory) == 1 and len(rounds.trajectory) == 3
    for a, b in zip(once.model.state_dict().values(), rounds.model.state_dict().values()):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)  # the same channels, the same last refit


def test_every_round_refits_against_the_unpruned_model():
    from kdnb.engine.prune.score.calibration import calibration_batches, layer_statistics
    from kdnb.engine.prune.rebuild.reconstruct import reconstruct_layer

    net, train, _ = _digits_mlp()  # least squares only: reconstruct=True then fits the classifier to the predictions
    small = prune(net, 0.7, criterion="l1", structured=True, data=train, rounds=3, reconstruct="least_squares").model
    classifier = small[5]
    gram, cross, rows = layer_statistics(small, "5", calibration_batches(train), net)  # targets: net's logits
    before = classifier.weight.detach().clone()
    reconstruct_layer(classifier, gram, cross, rows)
    assert torch.allclose(classifier.weight, before, atol=1e-5)  # already the least squares fit to the dense net


@pytest.mark.parametrize("rounds", [0, 2.5, True, "4"])
def test_bad_rounds_is_a_one_line_error(rounds):
    net, x = M.mlp(16, [8], 4), torch.randn(2, 16)
    with pytest.raises(KdnbError, match="rounds") as error:
        prune(net, 0.5, structured=True, example=x, rounds=rounds)
    assert "\n" not in str(error.value)


def test_auto_is_group_obs_with_data_and_l1_without():
    net, train, _ = _digits_mlp((16, 16))
    assert prune(net, 0.5, structured=True, data=train).criterion == "thinet"
    assert prune(net, 0.5, structured=True, example=torch.randn(2, 64)).criterion == "l1"  # no data
    grouped = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=4), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    data = [(torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,)))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 16 samples: the refit is damped
        result = prune(grouped, 0.4, structured=True, data=data)
    assert result.criterion == "thinet" and result.model[0].out_channels < 8  # one block per conv-group


def test_global_normalisation_divides_by_the_mean_of_the_channels_left():
    """Rounds re-score a network whose removed channels score 0: a layer's mean over what is left keeps its
    scores comparable (its mean over every channel, the removed included, once emptied a layer in 8 rounds)."""
    from kdnb.engine.prune.graph.groups import keep_vectors, masks_from_keep
    from kdnb.engine.prune.select.channels import removed_channels

    torch.manual_seed(0)
    net = M.mlp(8, [8, 8], 3)
    scores = importance(net, "l1", structured=True, example=torch.randn(2, 8))
    first, second = (group.root for group in scores.groups)
    half = torch.arange(8) < 4
    scores.channels[first] = torch.where(half, 0.0, 1.0).double()  # half removed already, the rest score 1
    scores.channels[second] = torch.full((8,), 1.0 + 1e-6, dtype=torch.float64)  # a hair above: kept first
    pruned = masks_from_keep(keep_vectors(scores.groups, {first: half}, scores.shapes), scores.shapes)
    total = sum(scores.shapes[n].numel() for n in scores.prunable)
    already = 1 - sum(int(pruned.get(n, torch.ones(scores.shapes[n])).sum()) for n in scores.prunable) / total
    gone = removed_channels(scores, already + 0.01, "global", pruned)
    assert bool(gone[first][half].all()) and int(gone[first].sum()) > 4 and not bool(gone[second].any())


@pytest.mark.parametrize("with_data", [False, True])
def test_a_transposed_conv_loses_output_channels_and_its_consumer_the_inputs(with_data):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(8, 12, 2, stride=2),
                        nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, 6, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    x = torch.randn(4, 1, 8, 8)
    data = [(torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))) for _ in range(2)]
    small = prune(net, 0.5, structured=True, **({"data": data} if with_data else {"example": x})).model
    up = small[2]
    assert up.in_channels < 8 and up.out_channels < 12 and up.weight.shape[:2] == (up.in_channels, up.out_channels)
    assert small[3].num_features == up.out_channels == small[5].in_channels
    assert small.eval()(x).shape == (4, 3)
