"""Distillation as an objective of the one training loop (`kdnb.engine.loop.fit`).

A step: the student reads the batch; the teacher's logits come from the cache (in the batch) or
from the frozen teacher run live; the loss is the method's formula from `losses`, and each of its
terms is reported apart ("ce", "kd", "fitnets", "at", "tckd", "nckd": unweighted values), so the
live chart can draw them as separate curves.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdnb.engine.device import model_device
from kdnb.engine.distill import losses
from kdnb.engine.distill.hooks import Tap
from kdnb.engine.distill.options import check_weights
from kdnb.engine.objective import StepOutput, split_batch


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
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if model_device(self.model) != x.device:
            self.model.to(x.device)
        return self.model(x).float()


class Distillation(nn.Module):
    """``objective(student, batch) -> StepOutput`` for method "kd", "fitnets", "at" or "dkd".

    Losses (the formulas live in `losses`):
        kd:       alpha * CE + (1 - alpha) * KD
        fitnets:  alpha * CE + (1 - alpha) * KD + beta * sum over layer pairs of hint(adapter(s_l), t_l)
                  (one stage; the paper trains the hint first, then KD)
        at:       alpha * CE + (1 - alpha) * KD + beta * sum over layer pairs of AT(s_l, t_l)
        dkd:      CE + w * (alpha * TCKD + beta * NCKD),  w = min((epoch + 1) / warmup, 1)

    With ``cached=True`` a batch is ``(x, y, teacher_logits)``; otherwise the teacher runs on ``x``.
    With ``unlabelled=True`` (a transfer set), labels of -1 mark inputs without a label: they enter
    every term but CE (and DKD needs labels).
    As a subscriber of the run (pass it in ``callbacks``) it follows the epoch for DKD's warm-up.
    The adapters of FitNets are submodules, so the loop trains them with the student.
    """

    def __init__(self, teacher: FrozenTeacher, method: str = "kd", temperature: float = 4.0, alpha: float = 0.5,
                 beta: float = 0.0, *, cached: bool = False, unlabelled: bool = False, warmup: int = 1,
                 pairs: Sequence[tuple[str, str]] = (), adapters: nn.ModuleList | None = None,
                 student_tap: Tap | None = None, teacher_tap: Tap | None = None):
        super().__init__()
        self.teacher = teacher  # a plain object, not a submodule: the loop must not train or move it
        self.method, self.temperature, self.alpha, self.beta = method, temperature, alpha, beta
        self.cached, self.unlabelled, self.warmup, self.epoch = cached, unlabelled, max(1, warmup), 0
        self.pairs = list(pairs)
        self.adapters = adapters if adapters is not None else nn.ModuleList()
        self.student_tap, self.teacher_tap = student_tap, teacher_tap

    def forward(self, model: nn.Module, batch: Any) -> StepOutput:
        x, y = split_batch(batch)
        s = model(x)
        t = batch[2].to(s.dtype) if self.cached else self.teacher(x)
        # hard_ce equals plain cross-entropy when every row is labelled, which is cheaper to compute
        ce = losses.hard_ce(s, y) if self.unlabelled else F.cross_entropy(s, y)
        if self.method == "dkd":
            terms = {"ce": ce, "tckd": losses.tckd(s, t, y, self.temperature),
                     "nckd": losses.nckd(s, t, y, self.temperature)}
            ramp = min((self.epoch + 1) / self.warmup, 1.0)
            loss = ce + ramp * (self.alpha * terms["tckd"] + self.beta * terms["nckd"])  # CE + w * losses.dkd
        else:
            terms = {"ce": ce, "kd": losses.soft_kl(s, t, self.temperature)}
            loss = self.alpha * ce + (1 - self.alpha) * terms["kd"]  # = losses.kd(s, t, y, T, alpha)
            if self.method in ("fitnets", "at"):
                name = "hint" if self.method == "fitnets" else "at"  # FitNets calls its term the hint loss
                terms[name] = self._feature_loss()
                loss = loss + self.beta * terms[name]
        if self.unlabelled:  # train accuracy counts the labelled rows only
            labelled = y != losses.UNLABELLED
            s, y = s[labelled], y[labelled]
        return StepOutput(loss=loss, logits=s, targets=y, terms=terms)

    def _feature_loss(self) -> torch.Tensor:
        total = 0.0
        for (t_name, s_name), adapt in zip(self.pairs, self.adapters):
            s_feat, t_feat = self.student_tap.outputs[s_name], self.teacher_tap.outputs[t_name]
            if self.method == "fitnets":
                total = total + losses.fitnets(adapt(s_feat), t_feat.float())
            else:
                total = total + losses.at(s_feat, t_feat.float())
        return total

    def on_run_start(self, state: Any) -> None:
        self.epoch = 0

    def on_epoch_end(self, state: Any) -> None:
        self.epoch = state.epoch + 1

    def close(self) -> None:
        """Remove the feature hooks, so the trained student carries none."""
        for tap in (self.student_tap, self.teacher_tap):
            if tap is not None:
                tap.remove()


def kd_objective(teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.5) -> Distillation:
    """Hinton KD against a live, frozen copy of ``teacher``, as an objective for `kdnb.engine.loop.fit`.

    ``fit(student, data, objective=kd_objective(teacher))`` minimises
    alpha * CE(y, s) + (1 - alpha) * T^2 * KL(p_t^T || p_s^T) (see `losses.kd`) and logs "ce" and
    "kd" per step. The teacher is copied once (the original is never touched), used in eval mode,
    and follows the batch to its device.
    """
    check_weights("kd", temperature, alpha, 0.0)
    return Distillation(FrozenTeacher(teacher), "kd", temperature, alpha)
