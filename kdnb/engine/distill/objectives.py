"""Distillation as an objective of the one training loop (`kdnb.engine.loop.fit`).

A step: the student reads the batch (one random view of it, with ``augment``); the teacher's
logits come from the cache (in the batch) or from the frozen teacher run live on the same view; the
loss is the method's formula from `losses`, called through the method's record in `methods`, and
each of its terms is reported apart ("ce", "kd", "hint", "at", "tckd", "nckd", "pseudo": unweighted
values), so the live chart can draw them as separate curves.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kdnb.engine import batches, checks
from kdnb.engine.device import model_device
from kdnb.engine.distill import augment, losses, methods
from kdnb.engine.distill.augment import Augmentation
from kdnb.engine.distill.hooks import Tap
from kdnb.engine.distill.options import check_augment, check_mixup, check_weights
from kdnb.engine.objective import StepOutput


class FrozenTeacher:
    """A private copy of the teacher in eval mode with gradients off: used, never trained.

    The user's teacher keeps its weights, mode, device and ``requires_grad`` flags. A teacher
    handed over in training mode is used in eval mode (dropout off, BatchNorm running statistics),
    with a warning that says so.
    """

    def __init__(self, teacher: nn.Module, device: torch.device | None = None):
        if teacher.training:
            warnings.warn("the teacher is in training mode; kdnb uses a copy of it in eval mode (dropout off, "
                          "BatchNorm running statistics) and never trains it; call teacher.eval() to silence this",
                          UserWarning, stacklevel=3)
        self.model = copy.deepcopy(teacher).eval().requires_grad_(False)
        if device is not None:
            self.model.to(device)

    @torch.no_grad()
    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The teacher's logits on one batch's inputs, called as the model is (it follows them to their device)."""
        device = batches.tensors(args, kwargs)[0].device
        if model_device(self.model) != device:
            self.model.to(device)
        return batches.logits_of(batches.call_model(self.model, args, kwargs)).float()


class Distillation(nn.Module):
    """``objective(student, batch) -> StepOutput`` for any method of the registry (`methods`).

    One step: draw the batch's random view (``augment``, then ``mixup``), which the teacher and the
    student both see (the batch's inputs as `kdnb.engine.batches` reads them; sequence logits compared per
    token over the positions that count); the teacher's logits come from the cache (``cached=True``: the batch is
    ``(x, y, teacher_logits)``, only without augmentation) or from the frozen teacher run live on
    that very view; the loss is the method's formula from `losses` (see `methods`), plus, for the feature
    methods (fitnets, cosine, at), beta * the feature loss summed over the layer pairs. For DKD,
    w = min((epoch + 1) / warmup, 1) ramps the DKD term up (the paper's warm-up).

    With ``unlabelled=True`` (a transfer set), labels of -1 mark inputs without a label: they enter
    every term but CE. As a subscriber of the run (pass it in ``callbacks``) it follows the epoch
    for DKD's warm-up. The adapters of FitNets are submodules, so the loop trains them with the student.
    """

    def __init__(self, teacher: FrozenTeacher | None, method: str = "kd", temperature: float = 4.0,
                 alpha: float = 0.5, beta: float = 0.0, *, cached: bool = False, unlabelled: bool = False,
                 warmup: int = 1, pairs: Sequence[tuple[str, str]] = (), adapters: nn.ModuleList | None = None,
                 student_tap: Tap | None = None, teacher_tap: Tap | None = None,
                 augment: Augmentation | None = None, mixup: float = 0.0):
        super().__init__()
        self.teacher = teacher  # a plain object, not a submodule: the loop must not train or move it
        self.spec = methods.get(method)
        self.method, self.temperature, self.alpha, self.beta = method, temperature, alpha, beta
        self.cached, self.unlabelled, self.warmup, self.epoch = cached, unlabelled, max(1, warmup), 0
        self.steps = 0  # batches seen this run: names a bad one
        self.augment, self.mixup = augment, mixup
        self.pairs = list(pairs)
        self.adapters = adapters if adapters is not None else nn.ModuleList()
        self.student_tap, self.teacher_tap = student_tap, teacher_tap

    def forward(self, model: nn.Module, batch: Any) -> StepOutput:
        args, kwargs, y = batches.split_batch(batch[:2] if self.cached else batch)  # cached: (x, y, teacher logits)
        if self.augment is not None:  # augment and mixup: batches of one input tensor (checked at the entry)
            args = (self.augment(args[0]),)
        mix = None
        if self.mixup:
            x, mix = augment.mixup(args[0], y, self.mixup)
            args = (x,)
        s = batches.logits_of(batches.call_model(model, args, kwargs))
        self.steps += 1
        t = None
        if self.spec.needs_teacher:
            t = batch[2].to(s.dtype) if self.cached else self.teacher(*args, **kwargs)
        if s.dim() > 2:  # per token: the positions that count, the same rows of teacher and student
            where = batches.positions(model, s, y, kwargs)
            s, y, t = where.logits(s), where.labels(y), (where.logits(t) if t is not None else None)
        if y is not None and s.dim() == 2:  # each batch's labels, as the loop checks plain training's
            known = y[y != losses.UNLABELLED] if self.unlabelled else y
            checks.check_labels(known, (len(known), s.shape[1]), f"in training step {self.steps} of this run (the "
                                "student is restored)")
        terms: dict[str, torch.Tensor] = {}
        ramp = min((self.epoch + 1) / self.warmup, 1.0)
        step = methods.Step(s, t, y, self.temperature, self.alpha, self.beta, ramp=ramp, mix=mix,
                            labelled=not self.unlabelled, terms=terms)
        loss = self.spec.loss(step)
        if self.spec.needs_features:
            terms[self.spec.feature_term] = self._feature_loss()
            loss = loss + self.beta * terms[self.spec.feature_term]
        if self.unlabelled:  # train accuracy counts the labelled rows only
            labelled = y != losses.UNLABELLED
            s, y = s[labelled], y[labelled]
        return StepOutput(loss=loss, logits=s, targets=y, terms=terms)  # mixed up: accuracy against y

    def _feature_loss(self) -> torch.Tensor:
        total = 0.0
        for (t_name, s_name), adapt in zip(self.pairs, self.adapters):
            s_feat, t_feat = self.student_tap.outputs[s_name], self.teacher_tap.outputs[t_name]
            total = total + self.spec.feature_loss(adapt(s_feat), t_feat.float())
        return total

    def on_run_start(self, state: Any) -> None:
        self.epoch, self.steps = 0, 0

    def on_epoch_end(self, state: Any) -> None:
        self.epoch = state.epoch + 1

    def close(self) -> None:
        """Remove the feature hooks, so the trained student carries none."""
        for tap in (self.student_tap, self.teacher_tap):
            if tap is not None:
                tap.remove()


def kd_objective(teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.5, *,
                 augment: Any = None, mixup: float = 0.0) -> Distillation:
    """Hinton KD against a live, frozen copy of ``teacher``, as an objective for `kdnb.engine.loop.fit`.

    ``fit(student, data, objective=kd_objective(teacher))`` minimises
    alpha * CE(y, s) + (1 - alpha) * T^2 * KL(p_t^T || p_s^T) (see `losses.kd`) and logs "ce" and
    "kd" per step. The teacher is copied once (the original is never touched), used in eval mode,
    and follows the batch to its device. ``augment`` (None, "digits", "mnist1d" or a callable) and
    ``mixup`` (Beta concentration, 0 = off) draw one view per step that teacher and student share.
    """
    check_weights("kd", temperature, alpha, 0.0)
    check_mixup(mixup, "kd")
    return Distillation(FrozenTeacher(teacher), "kd", temperature, alpha,
                        augment=check_augment(augment), mixup=mixup)
