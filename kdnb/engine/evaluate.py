"""Loss and accuracy of a model over a loader, without touching its weights or mode."""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from kdnb.engine import checks
from kdnb.engine.batches import IGNORE_INDEX, rows
from kdnb.engine.device import eval_mode, model_device, to_device


Outputs = Iterator[tuple[torch.Tensor, torch.Tensor | None, str, bool]]


def _outputs(model: torch.nn.Module, data: Iterable, what: str) -> Outputs:
    """(logits, labels or None, where, per token) per batch, each batch checked: a bad one is a one-line error naming it
    (it may differ from the first batch, the only one the entry checks). Labels are checked against the logits
    (class indices in range); sequence logits come as rows, one per position that counts
    (`kdnb.engine.batches.rows`)."""

    device = model_device(model)
    for index, batch in checks.numbered_batches(data, lambda i: f"batch {i + 1} of {what}"):
        where = f"in batch {index + 1} of {what}"
        args, kwargs, y = checks.check_batch(to_device(batch, device), f"{what} (batch {index + 1})")
        out = checks.logits_of(model, args, kwargs, f"the model ({where})")
        if y is not None:
            checks.check_labels(y, out.shape, where)
        sequence = out.dim() > 2
        out, y, _ = rows(model, out, y, kwargs)
        yield out, y, where, sequence


@torch.no_grad()
def predict(model: torch.nn.Module, data: Iterable, what: str = "the data") -> tuple[torch.Tensor, torch.Tensor | None]:
    """All logits (on CPU) and labels (or None) of ``data``, in loader order, in eval mode (sequence outputs:
    one row per position that counts)."""
    logits, labels = [], []
    with eval_mode(model):
        for out, y, _, _ in _outputs(model, data, what):
            logits.append(out.float().cpu())
            if y is not None:
                labels.append(y.cpu())
    return torch.cat(logits), (torch.cat(labels) if labels else None)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Iterable, what: str = "the evaluated data") -> dict[str, float]:
    """{"loss": mean cross-entropy, "accuracy": top-1} over labelled ``data`` (and "perplexity", exp(loss),
    for sequence outputs); each batch's labels are
    checked (class indices in range), so a bad one is a one-line error naming the batch. Sequence outputs
    count each position that counts once (labels -100 and padding left out; a causal LM's logits at t
    against token t + 1): the loss is then the mean per-token cross-entropy, exp(loss) the perplexity."""

    total_loss, correct, count, per_token = 0.0, 0, 0, False
    with eval_mode(model):
        for out, y, where, sequence in _outputs(model, data, what):
            per_token = per_token or sequence
            if y is None:
                raise checks.KdnbError(f"{what} has no labels {where}; pass a loader of (inputs, labels) (or "
                                       "mapping batches with 'labels') to measure loss and accuracy")
            out = out.float()
            total_loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(dim=1) == y).sum().item()
            count += int((y != IGNORE_INDEX).sum())
    if count == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    result = {"loss": total_loss / count, "accuracy": correct / count}
    return {**result, "perplexity": math.exp(result["loss"])} if per_token else result
