"""`Scores`: what a criterion says of each weight or channel of one model, computed once by `importance` and
read by every selection (`kdnb.engine.prune.select`) at any sparsity."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from kdnb.engine.prune.graph.groups import ChannelGroup


@dataclass
class Scores:
    """A criterion's scores of one model, ready for `masks_at`.

    Attributes:
        criterion: the criterion's name.
        structured: channel scores (True) or weight scores (False).
        model: the model the scores belong to (for "slimming", the copy trained with the L1 penalty):
            apply the masks to this one.
        weights: element score of every prunable weight, by parameter name (structured: those the
            criterion scores).
        prunable: names of the prunable weights (those sparsity counts).
        groups: structured only: the coupled channel groups, and ``channels[root]`` each channel's score.
        shapes: shape of every parameter, by name.
    """

    criterion: str
    structured: bool
    model: nn.Module
    weights: dict[str, torch.Tensor]
    prunable: list[str]
    shapes: dict[str, torch.Size]
    groups: list[ChannelGroup] = field(default_factory=list)
    channels: dict[str, torch.Tensor] = field(default_factory=dict)

    def __repr__(self) -> str:
        what = f"{len(self.channels)} channel groups" if self.structured else f"{len(self.weights)} weight tensors"
        return f"Scores(criterion={self.criterion!r}, structured={self.structured}, {what})"
