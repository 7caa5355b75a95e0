"""Magnitude criteria: a weight matters as much as its size (L1), or its size against the rest of its layer (LAMP)."""
from __future__ import annotations

import torch

from kdnb.engine.prune.score.registry import Criterion, register


def l1(weight: torch.Tensor) -> torch.Tensor:
    r"""Magnitude: :math:`s_k = |w_k|`.

    Han et al. 2015, "Learning both Weights and Connections for Efficient Neural Networks";
    summed over a channel it is the L1 norm of Li et al. 2017, "Pruning Filters for Efficient ConvNets".
    """
    return weight.abs()


def lamp(weight: torch.Tensor) -> torch.Tensor:
    r"""Layer-adaptive magnitude (LAMP): with the layer's weights sorted so that :math:`|w_1| \le \dots \le |w_n|`,
    :math:`s_u = w_u^2 / \sum_{v \ge u} w_v^2`.

    Lee et al. 2021, "Layer-adaptive Sparsity for the Magnitude-based Pruning": the same order as magnitude
    inside a layer, but comparable across layers, so one global threshold sets every layer's sparsity; each
    layer's largest weight scores 1, the maximum, so a global threshold below 1 never empties a layer.
    """
    return lamp_normalise(weight.detach().pow(2))


def lamp_normalise(scores: torch.Tensor) -> torch.Tensor:
    r"""LAMP's normaliser of non-negative scores of one layer: :math:`s_u / \sum_{v:\, s_v \ge s_u} s_v` (ties in
    a fixed order). Criteria marked ``layerwise`` rank globally by it (their scores are errors of one layer)."""
    flat = scores.detach().double().flatten().clamp_min(0)
    order = torch.argsort(flat, stable=True)
    ascending = flat[order]
    tail = ascending.flip(0).cumsum(0).flip(0)  # sum over v >= u
    result = torch.empty_like(flat)
    result[order] = ascending / tail.clamp_min(torch.finfo(torch.float64).tiny)
    return result.view_as(scores).to(scores.dtype)


register(Criterion(name="l1", formula=l1, label="L1 magnitude", colour="tab:blue", normalise=True))
register(Criterion(name="lamp", formula=lamp, label="LAMP", colour="tab:cyan"))
