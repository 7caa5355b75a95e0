"""Network slimming: train with an L1 penalty on the BatchNorm scales, then prune the channels whose scale is
small (Liu et al. 2017)."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from kdnb.engine import loop
from kdnb.engine.loop import Settings
from kdnb.engine.objective import StepOutput, Supervised
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


class SlimmingObjective:
    """Cross-entropy plus ``l1 * sum |gamma|`` over every BatchNorm scale (Liu et al. 2017)."""

    def __init__(self, l1: float):
        self.l1 = l1
        self.task = Supervised()

    def __call__(self, model: nn.Module, batch: object) -> StepOutput:
        out = self.task(model, batch)
        gammas = [m.weight for m in model.modules() if isinstance(m, BATCHNORM) and m.affine]
        penalty = slimming_penalty(gammas)
        return StepOutput(loss=out.loss + self.l1 * penalty, logits=out.logits, targets=out.targets,
                          terms={"ce": out.loss.detach(), "l1_gamma": penalty.detach()})


def slimming_phase(model: nn.Module, data: Iterable, *, epochs: int, l1: float, settings: Settings) -> object:
    """Train ``model`` in place for ``epochs`` with the slimming penalty, by the one loop with the run's training
    settings; returns the run's History."""
    history = loop.fit(model, data, epochs=epochs, objective=SlimmingObjective(l1), title="slimming",
                       **{name: getattr(settings, name) for name in loop.SETTINGS})
    if history.status == "interrupted":  # the scales are half-trained: scoring them would prune at random
        raise KeyboardInterrupt("network slimming's L1 phase was interrupted before any channel was pruned; "
                                "nothing was changed")
    return history


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
