"""Network slimming: train with an L1 penalty on the BatchNorm scales, then prune the channels whose scale is
small (Liu et al. 2017)."""
from __future__ import annotations

import torch
from torch import nn

from kdnb.engine.prune.graph.groups import BATCHNORM
from kdnb.engine.prune.score.registry import Criterion, Statistic, register
from kdnb.errors import KdnbError


def slimming(gamma: torch.Tensor) -> torch.Tensor:
    r"""Network slimming: :math:`s_c = |\gamma_c|`, the BatchNorm scale of channel ``c``.

    Liu et al. 2017, "Learning Efficient Convolutional Networks through Network Slimming": train with
    :math:`L = L_{task} + \lambda \sum_c |\gamma_c|` (see `slimming_penalty`), then prune small
    :math:`|\gamma_c|`.
    """
    return gamma.abs()


def slimming_penalty(gammas: list[torch.Tensor]) -> torch.Tensor:
    r"""The sparsity term of network slimming: :math:`\sum_c |\gamma_c|` over every BatchNorm scale."""
    return sum(g.abs().sum() for g in gammas)  # type: ignore[return-value]


def _has_batchnorm(model: nn.Module, criterion: str) -> None:
    if not any(isinstance(m, BATCHNORM) and m.affine for m in model.modules()):
        raise KdnbError(f"criterion {criterion!r} prunes by BatchNorm scales but the model has no BatchNorm "
                        "layer; use criterion='l1', 'taylor' or 'hessian'")


BATCHNORM_SCALE = Statistic(name="batchnorm_scale", needs_data=True, gradients=True, trains=True,
                            requires=_has_batchnorm, estimate=lambda ctx: {
                                f"{n}.weight" if n else "weight": (m.weight.detach(),)
                                for n, m in ctx.model.named_modules() if isinstance(m, BATCHNORM) and m.affine})

register(Criterion(name="slimming", formula=slimming, statistic=BATCHNORM_SCALE, unstructured=False,
                   label="network slimming", colour="tab:purple"))
