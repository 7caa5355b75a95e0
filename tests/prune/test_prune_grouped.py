"""Channels read by a grouped conv: its refit is one least squares per conv-group, ThiNet's group OBS scores them
with one block per conv-group, and criterion="auto" uses it (no L1 fallback)."""
from __future__ import annotations

import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune
from torch import nn

from kdnb.engine.prune import importance, masks_at, prune
from kdnb.engine.prune.rebuild.reconstruct import reconstruct
from kdnb.engine.prune.cut.masks import clone


def _net() -> nn.Sequential:
    """A conv whose 8 channels a Conv2d(8, 6, groups=2) reads (two conv-groups of 4 inputs, 3 outputs each)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1, groups=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(32, 1, 6, 6, generator=generator), torch.randint(0, 3, (32,), generator=generator))
            for _ in range(2)]


def _group_inputs(net: nn.Sequential, data) -> list[torch.Tensor]:
    """Per conv-group of ``net[2]``: its im2col inputs with the ones column, (rows, 4 x 9 + 1), in fp64."""
    x = torch.cat([x for x, _ in data])
    with torch.no_grad():
        a = F.unfold(net[1](net[0](x)), 3, padding=1).transpose(1, 2).reshape(-1, 72).double()
    return [torch.cat([part, torch.ones(len(part), 1, dtype=torch.float64)], 1) for part in a.chunk(2, 1)]


def _rows(conv: nn.Conv2d) -> list[torch.Tensor]:
    """Per conv-group: its rows (3, 4 x 9 + 1), the bias last."""
    flat = torch.cat([conv.weight.detach().reshape(6, -1), conv.bias.detach()[:, None]], 1).double()
    return list(flat.chunk(2))


def _refit_error(inputs: list[torch.Tensor], rows: list[torch.Tensor], gone: set[int]) -> float:
    """Least squares of each conv-group's rows on its inputs without the columns of positions ``gone`` (the same
    position in both groups), against the dense outputs: the squared error summed over groups."""
    keep = torch.tensor([c // 9 not in gone for c in range(36)] + [True])
    total = 0.0
    for a, w in zip(inputs, rows):
        target = a @ w.T
        solution = torch.linalg.lstsq(a[:, keep], target).solution
        total += float((a[:, keep] @ solution - target).pow(2).sum())
    return total


def test_refit_of_a_grouped_conv_is_least_squares_per_conv_group():
    net, data = _net(), _data()
    masked = clone(net)
    mask = torch.ones_like(net[2].weight)
    mask[:, 1] = 0  # position 1 of each conv-group: input channels 1 and 5
    torch.nn.utils.prune.custom_from_mask(masked[2], "weight", mask)
    reconstruct(masked, net, data, damp=0.0)
    inputs, dense = _group_inputs(net, data), _rows(net[2])
    keep = torch.tensor([c // 9 != 1 for c in range(36)] + [True])
    for a, w, solved in zip(inputs, dense, _rows(masked[2])):
        expected = torch.zeros_like(w)
        expected[:, keep] = torch.linalg.lstsq(a[:, keep], a @ w.T).solution.T
        assert torch.allclose(solved, expected, atol=1e-4)
    assert bool((masked[2].weight[:, 1] == 0).all())


def test_thinet_scores_a_grouped_consumer_by_the_refit_error_per_conv_group(monkeypatch):
    """Undamped, group OBS's accumulated cost of the greedy's removals is the least-squares refit's error with
    those channels gone (each conv-group solved alone), and each step takes the cheapest (brute force)."""
    monkeypatch.setattr(sys.modules["kdnb.engine.prune.score.calibration"], "DAMP", 0.0)  # H = 2 X^T X
    net, data = _net(), _data()
    scores = importance(net, "thinet", data, structured=True)
    group = next(g for g in scores.groups if g.root == "0")
    assert group.units.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]  # position p of each conv-group goes together
    inputs, rows = _group_inputs(net, data), _rows(net[2])
    channel = scores.channels["0"]
    order = [int(u) for u in torch.argsort(channel)[:3]]  # the greedy's removals; the last one left scores 2
    assert float(channel[torch.argsort(channel)[3]]) == 2.0
    errors = [_refit_error(inputs, rows, set(order[:i + 1])) for i in range(3)]
    for i, unit in enumerate(order):
        candidates = {u: _refit_error(inputs, rows, set(order[:i]) | {u}) for u in range(4) if u not in order[:i]}
        assert min(candidates, key=candidates.get) == unit
        assert float(channel[unit]) == pytest.approx(errors[i] / errors[-1], rel=1e-6)


def _net1d() -> nn.Sequential:
    """`_net` in one dimension: a Conv1d(8, 6, groups=2) reads the first conv's channels."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(8, 6, 3, padding=1, groups=2),
                         nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(6, 3)).eval()


@pytest.mark.parametrize("dims", [2, 1])
def test_auto_on_a_grouped_conv_is_thinet_and_its_refit_masked_equals_deleted(dims):
    net, data = (_net(), _data()) if dims == 2 else (_net1d(), [(x.flatten(1)[:, None], y) for x, y in _data()])
    x = data[0][0][:8]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = prune(net, 0.4, structured=True, data=data, rounds=1)
        scores = importance(net, "thinet", data, structured=True)
    assert result.criterion == "thinet" and result.model[0].out_channels < 8
    masked = clone(net)
    for param, mask in masks_at(scores, 0.4).items():
        layer, _, attr = param.rpartition(".")
        torch.nn.utils.prune.custom_from_mask(masked.get_submodule(layer), attr, mask)
    reconstruct(masked, net, data)
    small = result.model.eval()
    assert small[2].groups == 2 and small[2].in_channels == result.model[0].out_channels
    assert torch.allclose(masked(x), small(x), atol=1e-5)


def test_a_grouped_conv_consumer_is_scored_in_what_its_batchnorm_hands_on():
    """ThiNet measures a consumer's error after the BatchNorm that normalises its outputs; a grouped conv's rows
    share units (one position of every conv-group), so each row is scaled by its own BatchNorm channel."""
    from kdnb.engine.prune.graph.groups import channel_groups, dependency_graph
    from kdnb.engine.prune.score.criteria import Context
    from kdnb.engine.prune.score.criteria.consumers import _normalised_rows

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1, groups=2),
                        nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3)).eval()
    norm = net[3]
    norm.running_var.uniform_(0.5, 2.0)
    norm.weight.data.uniform_(-2.0, 2.0)
    x = torch.randn(4, 1, 6, 6)
    context = Context(net, None, True, 0, "fisher", channel_groups(net, dependency_graph(net, x)))
    rows = net[2].weight.detach().double().reshape(6, -1)
    scale = (norm.running_var.double() + norm.eps).rsqrt() * norm.weight.detach().double().abs()
    assert torch.allclose(_normalised_rows(context, "2", rows), rows * scale[:, None])
