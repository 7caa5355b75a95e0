"""Per-epoch validation of a student: loss, accuracy, and how often it agrees with its teacher."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch.utils.data import SequentialSampler

from kdnb.engine.device import eval_mode, model_device, to_device
from kdnb.errors import KdnbError
from kdnb.engine.distill.objectives import FrozenTeacher
from kdnb.engine.evaluate import predict
from kdnb.engine.objective import split_batch


class Agreement:
    """``evaluate_fn`` for `fit`: {"val_agreement", "val_loss", "val_acc"}.

    val_agreement = fraction of val samples where argmax(student) == argmax(teacher) (top-1
    agreement). When ``val`` visits its samples in a fixed order (a SequentialSampler) the
    teacher's predictions are computed once; otherwise the teacher runs beside the student.
    """

    def __init__(self, teacher: FrozenTeacher, val: Iterable):
        self.teacher = teacher
        logits, labels = predict(teacher.model, val)
        if labels is not None:
            check_val_labels(labels, logits.shape[1], getattr(val, "batch_size", None))
        self.teacher_accuracy = float((logits.argmax(1) == labels).float().mean()) if labels is not None else None
        fixed = isinstance(getattr(val, "sampler", None), SequentialSampler)
        self.teacher_pred = logits.argmax(1) if fixed else None

    def __call__(self, model: torch.nn.Module, val: Iterable) -> dict[str, float]:
        if self.teacher_pred is not None:
            logits, labels = predict(model, val)
            teacher_pred = self.teacher_pred
        else:
            logits, labels, teacher_pred = self._side_by_side(model, val)
        metrics = {"val_agreement": float((logits.argmax(1) == teacher_pred).float().mean())}
        if labels is not None:
            metrics["val_loss"] = float(F.cross_entropy(logits, labels))
            metrics["val_acc"] = float((logits.argmax(1) == labels).float().mean())
        return metrics

    @torch.no_grad()
    def _side_by_side(self, model: torch.nn.Module, val: Iterable
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        logits, labels, teacher_pred = [], [], []
        with eval_mode(model):
            for batch in val:
                x, y = split_batch(to_device(batch, model_device(model)))
                logits.append(model(x).float().cpu())
                teacher_pred.append(self.teacher(x).argmax(1).cpu())
                if y is not None:
                    labels.append(y.cpu())
        return torch.cat(logits), (torch.cat(labels) if labels else None), torch.cat(teacher_pred)


def check_val_labels(labels: torch.Tensor, num_classes: int, batch_size: int | None) -> None:
    """Every val label is a class the teacher outputs (all at once: `predict` gathered them)."""
    bad = ((labels < 0) | (labels >= num_classes)).nonzero()
    if len(bad):
        where = f"batch {int(bad[0]) // batch_size + 1} of val" if batch_size else "val"
        raise KdnbError(f"labels out of range in {where}: found {int(labels[bad[0]])} but the teacher outputs "
                        f"{num_classes} classes; fix the labels or pass a teacher with one output per class")
