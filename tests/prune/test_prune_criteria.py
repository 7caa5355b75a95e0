"""Pruning criteria against their formulas, the batch statistics behind them, and an oracle:
taylor and hessian neuron scores must rank neurons like the true loss change of removing them."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch.utils.data import DataLoader, TensorDataset

import kdnb
from kdnb.engine.loop import fit
from kdnb.engine.prune import importance, masks_at
from kdnb.engine.prune.score import criteria
from kdnb.engine.prune.score import estimate


def test_formulas_on_hand_checkable_tensors():
    w = torch.tensor([[-2.0, 0.5], [0.0, 3.0]])
    g2 = torch.tensor([[1.0, 4.0], [9.0, 0.25]])
    h = torch.tensor([[0.5, 2.0], [1.0, -1.0]])
    assert torch.equal(criteria.l1(w), torch.tensor([[2.0, 0.5], [0.0, 3.0]]))
    assert torch.equal(criteria.taylor(w, g2), torch.tensor([[4.0, 1.0], [0.0, 2.25]]))  # (g w)^2
    assert torch.equal(criteria.hessian(w, h), torch.tensor([[1.0, 0.25], [0.0, -4.5]]))  # h w^2 / 2
    assert torch.equal(criteria.slimming(torch.tensor([-0.3, 0.1])), torch.tensor([0.3, 0.1]))
    assert criteria.slimming_penalty([torch.tensor([-1.0, 2.0]), torch.tensor([0.5])]).item() == 3.5
    r = criteria.random(w, torch.Generator().manual_seed(0))
    assert r.shape == w.shape and bool(((r >= 0) & (r < 1)).all())
    assert torch.equal(r, criteria.random(w, torch.Generator().manual_seed(0)))


def _tiny():
    torch.manual_seed(0)
    x, y = torch.randn(12, 3), torch.randint(0, 2, (12,))
    return nn.Linear(3, 2), DataLoader(TensorDataset(x, y), batch_size=4)


def test_squared_gradients_average_each_batch_gradient_squared():
    model, data = _tiny()
    expected = torch.zeros_like(model.weight)
    for x, y in data:
        g, = torch.autograd.grad(F.cross_entropy(model(x), y), [model.weight])
        expected += g.pow(2) / len(data)
    assert torch.allclose(estimate.squared_gradients(model, data)["weight"], expected, atol=1e-7)


def test_fisher_diagonal_averages_per_sample_gradients_squared_over_all_batches():
    model, data = _tiny()
    expected = torch.zeros_like(model.weight)
    for x, y in data:
        for xi, yi in zip(x, y):
            g, = torch.autograd.grad(F.cross_entropy(model(xi[None]), yi[None]), [model.weight])
            expected += g.pow(2) / 12
    assert torch.allclose(estimate.fisher_diagonal(model, data, chunk=3)["weight"], expected, atol=1e-7)


class _Counted:
    """A loader that counts the batches it has handed out."""

    def __init__(self, loader):
        self.loader, self.served = loader, 0

    def __iter__(self):
        for batch in self.loader:
            self.served += 1
            yield batch

    def __len__(self):
        return len(self.loader)


@pytest.mark.parametrize("statistic", ["squared_gradients", "fisher_diagonal", "hutchinson_diagonal"])
def test_statistics_read_only_the_first_samples(statistic):
    model, data = _tiny()  # 12 samples in batches of 4
    first = DataLoader(TensorDataset(*[t[:6] for t in data.dataset.tensors]), batch_size=4)  # 4 + 2
    counted = _Counted(data)
    estimated = getattr(estimate, statistic)(model, counted, samples=6)["weight"]
    assert torch.allclose(estimated, getattr(estimate, statistic)(model, first)["weight"], atol=1e-7)
    assert counted.served == 2  # the third batch is never loaded


@pytest.mark.parametrize("criterion", ["taylor", "hessian", "wanda", "obs"])
def test_importance_and_prune_score_on_calibration_samples(criterion):
    torch.manual_seed(0)
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    data = DataLoader(TensorDataset(x, y), batch_size=8)
    first = DataLoader(TensorDataset(x[:20], y[:20]), batch_size=8)
    capped = importance(model, criterion, data, calibration_samples=20).weights
    assert all(torch.equal(capped[n], v) for n, v in importance(model, criterion, first).weights.items())
    assert not all(torch.equal(capped[n], v) for n, v in importance(model, criterion, data).weights.items())
    options = dict(criterion=criterion, reconstruct=False, seed=0)
    pruned = kdnb.prune(model, 0.5, data=data, calibration_samples=20, **options).model
    expected = kdnb.prune(model, 0.5, data=first, **options).model
    assert all(torch.equal(a, b) for a, b in zip(pruned.state_dict().values(), expected.state_dict().values()))


class _Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))

    def forward(self, x):
        return x * self.weight


def test_hutchinson_is_exact_for_a_diagonal_hessian_and_averages_all_batches():
    x = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]])
    data = DataLoader(TensorDataset(x, torch.zeros(2)), batch_size=1)
    loss = lambda out, y: out.pow(2).sum()  # noqa: E731  d2/dw_k2 = 2 x_k^2, no cross terms
    estimated = estimate.hutchinson_diagonal(_Scale(), data, probes=1, loss_fn=loss)["weight"]
    assert torch.allclose(estimated, (2 * x.pow(2)).mean(0))


def test_hutchinson_estimates_the_hessian_diagonal_of_a_classifier():
    model, data = _tiny()
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    exact = torch.zeros(6)
    for x, y in data:  # the exact diagonal, averaged over every batch
        loss = lambda flat: F.cross_entropy(F.linear(x, flat.view(2, 3), b), y)  # noqa: E731
        exact += torch.autograd.functional.hessian(loss, w.flatten()).diagonal() / len(data)
    estimated = estimate.hutchinson_diagonal(model, data, probes=60, seed=0)["weight"].flatten()
    assert torch.allclose(estimated, exact, atol=0.25 * exact.abs().max())


def test_global_l1_masks_equal_torch_global_unstructured():
    torch.manual_seed(0)
    net = kdnb.models.mlp(8, [16, 12], 3)
    scores = importance(net, "l1")
    ours = masks_at(scores, 0.7, scope="global")
    layers = [m for m in net if isinstance(m, nn.Linear)]
    torch_prune.global_unstructured([(m, "weight") for m in layers], torch_prune.L1Unstructured, amount=0.7)
    for name, module in zip(["1.weight", "3.weight", "5.weight"], layers):
        assert torch.equal(ours[name], module.weight_mask.bool())


def test_local_l1_masks_equal_torch_l1_unstructured_per_layer():
    torch.manual_seed(1)
    net = kdnb.models.mlp(8, [16], 3)
    ours = masks_at(importance(net, "l1"), 0.4, scope="local")
    for name in ("1", "3"):
        layer = net.get_submodule(name)
        torch_prune.l1_unstructured(layer, "weight", amount=0.4)
        assert torch.equal(ours[f"{name}.weight"], layer.weight_mask.bool())


def test_hessian_ranks_lamp_normalised_in_one_shot_and_raw_in_gradual_steps():
    """One shot: the OBD scores are LAMP-normalised per layer before the global threshold (a raw one empties
    layers); a gradual step ranks the raw scores, as one loss's estimates (bench/prune_sparsity.py)."""
    torch.manual_seed(0)
    net = kdnb.models.mlp(8, [16, 12], 3)
    x = torch.randn(64, 8)
    scores = importance(net, "hessian", DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16))

    def global_threshold(values):  # the kept weights: all but the 70 % lowest values over every layer
        flat = torch.cat([v.flatten() for v in values.values()])
        cut = flat.sort().values[round(0.7 * flat.numel()) - 1]
        return {n: v > cut for n, v in values.items()}

    raw = global_threshold(scores.weights)
    normalised = global_threshold({n: criteria.lamp_normalise(v) for n, v in scores.weights.items()})
    assert masks_at(scores, 0.7, gradual=True).keys() == raw.keys()
    for name in raw:
        assert torch.equal(masks_at(scores, 0.7, gradual=True)[name], raw[name])
        assert torch.equal(masks_at(scores, 0.7)[name], normalised[name])
    assert any(not torch.equal(raw[n], normalised[n]) for n in raw)  # the two rankings differ here


def test_masks_at_is_cheap_and_nested_across_sparsities():
    torch.manual_seed(0)
    scores = importance(kdnb.models.mlp(8, [16], 3), "l1")
    low, high = masks_at(scores, 0.3), masks_at(scores, 0.6)
    for name in low:
        assert bool((high[name] <= low[name]).all())  # what 30 % removes, 60 % removes too
    kept = sum(int(m.sum()) for m in high.values())
    assert kept == round(0.4 * sum(m.numel() for m in high.values()))


@pytest.fixture(scope="module")
def trained_mlp():
    train, _ = kdnb.datasets.load("digits", batch_size=256, seed=0)
    torch.manual_seed(0)
    net = kdnb.models.mlp(64, [24], 10)
    fit(net, train, epochs=5, lr=1e-2, seed=0, device="cpu", check_inputs=False)
    return net, train


def _spearman(a, b):
    ranks = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    return float(np.corrcoef(ranks(np.asarray(a)), ranks(np.asarray(b)))[0, 1])


@pytest.mark.parametrize("criterion, estimator", [("taylor", "fisher"), ("hessian", "fisher"),
                                                  ("hessian", "hutchinson")])
def test_oracle_neuron_scores_rank_like_the_true_loss_change(trained_mlp, criterion, estimator):
    net, train = trained_mlp
    x, y = (torch.cat(t) for t in zip(*train))

    def loss(model):
        with torch.no_grad():
            return F.cross_entropy(model.eval()(x), y).item()

    base = loss(net)
    true_change = []
    for k in range(24):  # ablate hidden neuron k: its input row, its bias, its output column
        ablated = kdnb.engine.prune.cut.masks.clone(net)
        with torch.no_grad():
            ablated[1].weight[k] = 0
            ablated[1].bias[k] = 0
            ablated[3].weight[:, k] = 0
        true_change.append(loss(ablated) - base)
    scores = importance(net, criterion, train, structured=True, hessian_estimator=estimator)
    assert _spearman(scores.channels["1"].numpy(), true_change) > 0.5


def test_random_with_seed_none_prunes_unseeded_without_touching_the_global_rng():
    """Found by the property test: seed=None reached torch.Generator().manual_seed(None)."""
    torch.manual_seed(0)
    model, state = kdnb.models.mlp(6, [8], 3), torch.get_rng_state()
    result = kdnb.prune(model, 0.5, criterion="random", seed=None, progress=False, plot=False)
    assert result.sparsity == pytest.approx(0.5, abs=0.02)
    assert torch.equal(torch.get_rng_state(), state)


def test_reading_criteria_score_a_channel_by_the_weights_that_read_it():
    """wanda (Wanda-sp), obs and hessian score hidden neuron j by the column j of the next layer; taylor by its
    whole group (input row, bias and that column)."""
    torch.manual_seed(0)
    x, y = torch.randn(128, 20), torch.randint(0, 4, (128,))
    train = DataLoader(TensorDataset(x, y), batch_size=32)  # unshuffled: the same batch gradients every pass
    net = nn.Sequential(nn.Linear(20, 6), nn.ReLU(), nn.Linear(6, 4))
    with torch.no_grad():
        hidden = torch.relu(net[0](x)).double()
    w, w_in = net[2].weight.detach().double(), net[0].weight.detach().double()
    gram = hidden.T @ hidden
    inverse = torch.linalg.inv(2 * (gram + 0.01 * gram.diagonal().mean() * torch.eye(6, dtype=torch.float64)))
    expected = {"wanda": hidden.norm(dim=0) * w.abs().sum(0),  # ||X_j|| sum_i |W_ij|
                "obs": (w.pow(2) / (2 * inverse.diagonal())).sum(0)}  # sum_i W_ij^2 / (2 [H^-1]_jj)
    fisher = estimate.fisher_diagonal(net, train)
    expected["hessian"] = (0.5 * fisher["2.weight"].double() * w.pow(2)).sum(0)  # column j's OBD terms
    g2 = estimate.squared_gradients(net, train)
    expected["taylor"] = ((w.pow(2) * g2["2.weight"].double()).sum(0) + (w_in.pow(2) * g2["0.weight"].double()).sum(1)
                          + net[0].bias.detach().double().pow(2) * g2["0.bias"].double())
    for name, value in expected.items():
        scores = importance(net, name, train, structured=True).channels["0"]
        assert torch.allclose(scores, value, rtol=1e-4), name


def test_thinet_cost_lets_the_consumer_bias_absorb_a_removed_channels_mean():
    """A consumer with a bias: its Hessian carries the ones column, so ThiNet's cost of removing a channel is the
    error left after the refit of the other columns *and the bias* (what the reconstruction re-solves)."""
    from kdnb.engine.prune.score.criteria.consumers import CONSUMER_INVERSE_HESSIAN
    from kdnb.engine.prune.graph.groups import channel_groups, dependency_graph

    torch.manual_seed(0)
    x = torch.randn(50, 3, dtype=torch.float64) + torch.tensor([3.0, 0.0, -2.0], dtype=torch.float64)  # means
    a = torch.cat([x, torch.ones(50, 1, dtype=torch.float64)], 1)
    w = torch.randn(4, 4, dtype=torch.float64)  # three inputs and the bias
    inverse = torch.linalg.inv(2 * a.T @ a)
    scores = criteria.thinet([(w, inverse, torch.arange(3)[:, None])])
    first = int(scores.argmin())
    kept = [c for c in range(4) if c != first]  # the bias column always stays
    refit = torch.linalg.lstsq(a[:, kept], a @ w.T).solution
    error = ((a[:, kept] @ refit - a @ w.T) ** 2).sum()
    cost = 0.5 * (w[:, :3] ** 2).sum(0) / inverse.diagonal()[:3]
    assert torch.allclose(error, cost[first], rtol=1e-9) and first == int(cost.argmin())

    net = nn.Sequential(nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    data = DataLoader(TensorDataset(torch.randn(32, 6), torch.randint(0, 2, (32,))), batch_size=16)
    groups = channel_groups(net, dependency_graph(net, torch.randn(1, 6)))
    context = criteria.Context(net, data, True, 0, "fisher", groups)
    ((rows, inverse, cols),) = CONSUMER_INVERSE_HESSIAN.estimate(context)["0"][0]
    with torch.no_grad():
        hidden = torch.cat([torch.relu(net[0](xb)) for xb, _ in data])
    a = torch.cat([hidden.double(), torch.ones(32, 1, dtype=torch.float64)], 1)
    gram = a.T @ a
    damped = 2 * (gram + 0.01 * gram.diagonal().mean() * torch.eye(4, dtype=torch.float64))
    assert torch.allclose(rows, torch.cat([net[2].weight, net[2].bias[:, None]], 1).detach().double())
    assert torch.allclose(inverse, torch.linalg.inv(damped), rtol=1e-6) and cols.flatten().tolist() == [0, 1, 2]
