"""Network slimming's training phase: the one loop trains the model with the L1 penalty on its BatchNorm scales
(`kdnb.engine.prune.score.criteria.batchnorm`) before the scales are read as scores."""
from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from kdnb.engine import loop
from kdnb.engine.loop import Settings
from kdnb.engine.objective import StepOutput, Supervised
from kdnb.engine.prune.graph.groups import BATCHNORM
from kdnb.engine.prune.score.criteria.batchnorm import slimming_penalty


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
