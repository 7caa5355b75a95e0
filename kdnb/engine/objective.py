"""What one training step minimises. The loop is the same for training, distillation and fine-tuning;
only the objective changes."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from kdnb.engine.batches import call_model, logits_of, rows, split_batch


@dataclass
class StepOutput:
    """The loss of one batch, the student's logits and targets (for accuracy), and named loss terms."""

    loss: torch.Tensor
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    terms: dict[str, torch.Tensor | float] = field(default_factory=dict)


class Supervised:
    """Hard-label training: ``loss_fn(logits, y)`` (cross-entropy by default); sequence logits (batch, tokens,
    classes) are scored per token over the positions that count (`kdnb.engine.batches.rows`).

    ``loss_fn`` may return a tensor, or ``(tensor, {"name": term, ...})`` to report extra terms.
    """

    def __init__(self, loss_fn: Callable[..., Any] | None = None):
        self.loss_fn = loss_fn or F.cross_entropy
        self.needs_labels = loss_fn is None  # a loss of the user's may do without them

    def __call__(self, model: torch.nn.Module, batch: Any) -> StepOutput:
        args, kwargs, y = split_batch(batch)
        logits = logits_of(call_model(model, args, kwargs))
        if logits.dim() > 2:  # per token, over the positions that count
            logits, y, _ = rows(model, logits, y, kwargs)
        result = self.loss_fn(logits, y)
        loss, terms = result if isinstance(result, tuple) else (result, {})
        return StepOutput(loss=loss, logits=logits, targets=y, terms=terms)
