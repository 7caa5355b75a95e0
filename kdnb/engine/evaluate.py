"""Loss and accuracy of a model over a loader, without touching its weights or mode."""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from kdnb.engine import checks
from kdnb.engine.device import eval_mode, model_device, to_device


Outputs = Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, str]]


def _outputs(model: torch.nn.Module, data: Iterable, what: str) -> Outputs:
    """(inputs, labels or None, logits, where) per batch, each batch checked: a bad one is a one-line error
    naming it (it may differ from the first batch, the only one the entry checks)."""

    device = model_device(model)
    for index, batch in checks.numbered_batches(data, lambda i: f"batch {i + 1} of {what}"):
        where = f"in batch {index + 1} of {what}"
        x, y = checks.check_batch(to_device(batch, device), f"{what} (batch {index + 1})")
        yield x, y, checks.logits_of(model, x, f"the model ({where})"), where


@torch.no_grad()
def predict(model: torch.nn.Module, data: Iterable, what: str = "the data") -> tuple[torch.Tensor, torch.Tensor | None]:
    """All logits (on CPU) and labels (or None) of ``data``, in loader order, in eval mode."""
    logits, labels = [], []
    with eval_mode(model):
        for _, y, out, _ in _outputs(model, data, what):
            logits.append(out.float().cpu())
            if y is not None:
                labels.append(y.cpu())
    return torch.cat(logits), (torch.cat(labels) if labels else None)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Iterable, what: str = "the evaluated data") -> dict[str, float]:
    """{"loss": mean cross-entropy, "accuracy": top-1} over labelled ``data``; each batch's labels are
    checked (1-D class indices in range), so a bad one is a one-line error naming the batch."""

    total_loss, correct, count = 0.0, 0, 0
    with eval_mode(model):
        for x, y, out, where in _outputs(model, data, what):
            if y is None:
                raise checks.KdnbError(f"{what} has no labels {where}; pass a loader of (inputs, labels) to "
                                       "measure loss and accuracy")
            checks.check_labels(y, out.shape[1], x.shape[0], where)
            out = out.float()
            total_loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(dim=1) == y).sum().item()
            count += y.numel()
    if count == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    return {"loss": total_loss / count, "accuracy": correct / count}
