"""What one training step minimises. The loop is the same for training, distillation and fine-tuning;
only the objective changes."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class StepOutput:
    """The loss of one batch, the student's logits and targets (for accuracy), and named loss terms."""

    loss: torch.Tensor
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    terms: dict[str, torch.Tensor | float] = field(default_factory=dict)


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x, y, ...) -> (x, y); a bare tensor is an unlabeled batch."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and len(batch) >= 1:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    if isinstance(batch, dict) and "x" in batch:
        return batch["x"], batch.get("y")
    raise TypeError(f"a batch should be (inputs, labels), got {type(batch).__name__}")


class Supervised:
    """Hard-label training: ``loss_fn(logits, y)`` (cross-entropy by default).

    ``loss_fn`` may return a tensor, or ``(tensor, {"name": term, ...})`` to report extra terms.
    """

    def __init__(self, loss_fn: Callable[..., Any] | None = None):
        self.loss_fn = loss_fn or F.cross_entropy

    def __call__(self, model: torch.nn.Module, batch: Any) -> StepOutput:
        x, y = split_batch(batch)
        logits = model(x)
        result = self.loss_fn(logits, y)
        loss, terms = result if isinstance(result, tuple) else (result, {})
        return StepOutput(loss=loss, logits=logits, targets=y, terms=terms)
