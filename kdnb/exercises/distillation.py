"""Checks for the distillation exercises: soft labels, the KD loss, gap closure.

The references are kdnb's own: `kdnb.engine.distill.losses` (Hinton et al. 2015). Each wrong answer
is compared with the usual mistakes so the hint can name the one made.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kdnb.engine.distill import losses
from kdnb.exercises.report import FAILED, NOT_DONE, Report, as_number, as_tensor, attempt, close, grade_fraction


def _logits(seed: int, rows: int = 6, classes: int = 10, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, classes, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def soft_labels(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> Report:
    """Check ``fn(logits, temperature) -> probabilities``: p^T = softmax(logits / T) over the classes (dim 1)."""
    report = Report("soft_labels", checks=3)
    for temperature in (1.0, 4.0):
        z = _logits(int(temperature))
        what = f"soft_labels(logits of shape {tuple(z.shape)}, T={temperature:g})"
        value = attempt(report, fn, z.clone(), temperature)
        if value is NOT_DONE:
            return report
        if value is FAILED:
            continue
        p = as_tensor(report, value, what, z.shape)
        if p is None:
            continue
        expected = losses.soft_labels(z, temperature)
        if close(p, expected):
            report.ok(f"{what}: each row is softmax(logits / T), summing to 1")
        elif close(p, F.log_softmax(z / temperature, dim=1)):
            report.wrong(what, "these are log-probabilities (log_softmax): soft labels are probabilities, use softmax")
        elif close(p.sum(0), torch.ones(z.shape[1], dtype=p.dtype)):
            report.wrong(what, "your columns sum to 1, not your rows: take the softmax over the classes, dim=1")
        elif temperature != 1 and close(p, F.softmax(z, dim=1)):
            report.wrong(what, "this is softmax(logits): divide the logits by the temperature first")
        elif temperature != 1 and close(p, F.softmax(z * temperature, dim=1)):
            report.wrong(what, "you multiplied the logits by T, which sharpens: divide by T to soften")
        elif temperature != 1 and close(p, F.softmax(z, dim=1) / temperature):
            report.wrong(what, "divide the logits by T inside the softmax, not the probabilities after it")
        else:
            worst = float((p - expected).abs().max())
            report.wrong(what, f"values differ from softmax(logits / T) by up to {worst:.3g}")
    if report.passes == 2:
        hot, cold = fn(_logits(7), 4.0), fn(_logits(7), 1.0)
        softer = "a higher temperature gives softer labels (a lower top probability)"
        if float(hot.max(1).values.mean()) < float(cold.max(1).values.mean()):
            report.ok(softer)
        else:
            report.wrong(softer, "at T=4 the top probability should be lower than at T=1: divide the logits by T")
    return report


def kd_loss(fn: Callable[..., torch.Tensor]) -> Report:
    """Check ``fn(student_logits, teacher_logits, labels, temperature, alpha) -> scalar loss``:

        KD = alpha * CE(y, s) + (1 - alpha) * T^2 * KL(p_t^T || p_s^T),   batch mean

    (alpha weights the hard-label term, as in `kdnb.engine.distill.losses.kd`).
    """
    report = Report("kd_loss", checks=4)
    s, t = _logits(1), _logits(2)
    y = torch.randint(0, s.shape[1], (s.shape[0],), generator=torch.Generator().manual_seed(3))
    for temperature, alpha, what in ((4.0, 0.0, "soft term only (alpha=0, T=4)"),
                                     (4.0, 1.0, "hard term only (alpha=1, T=4)"),
                                     (2.0, 0.3, "both terms (alpha=0.3, T=2)")):
        student = s.clone().requires_grad_(True)
        value = attempt(report, fn, student, t.clone(), y.clone(), temperature, alpha)
        if value is NOT_DONE:
            return report
        if value is FAILED:
            continue
        if isinstance(value, torch.Tensor) and value.dim() == 1 and len(value) == len(s):
            report.wrong(what, "you returned one loss per sample: return the batch mean, a single number")
            continue
        mine = as_number(value)
        if mine is None:
            report.wrong(what, f"return a single number (a 0-dim tensor), got {type(value).__name__}")
            continue
        expected = float(losses.kd(s, t, y, temperature, alpha))
        if abs(mine - expected) <= 1e-4 * max(1.0, abs(expected)):
            report.ok(f"{what}: {mine:.4f}")
            if alpha == 0.3 and isinstance(value, torch.Tensor) and value.requires_grad:
                value.backward()
                if student.grad is not None and float(student.grad.abs().sum()) > 0:
                    report.ok("the loss backpropagates into the student's logits")
                else:
                    report.wrong("gradient", "no gradient reaches the student's logits: did you .detach() them?")
            continue
        report.wrong(f"{what}: you get {mine:.4f}, expected {expected:.4f}",
                     _kd_hint(mine, expected, s, t, y, temperature, alpha))
    return report


def _kd_hint(mine: float, expected: float, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
             temperature: float, alpha: float) -> str:
    """Name the likely mistakes by recomputing the loss with each usual mistake, alone and combined (a student
    who passes probabilities to F.kl_div often also picks its default reduction)."""
    T, n, classes = temperature, len(s), s.shape[1]
    log_ps, log_pt = F.log_softmax(s / T, 1), F.log_softmax(t / T, 1)
    kl = lambda a, b: float((a.exp() * (a - b)).sum(1).mean())  # noqa: E731 - KL(exp(a) || exp(b)), batch mean
    ce = float(F.cross_entropy(s, y))
    soft_terms = [  # the KL term as computed, and what is wrong with it ("" when nothing is)
        (kl(log_pt, log_ps), ""),
        (float((log_pt.exp() * (log_pt - log_ps.exp())).sum(1).mean()),
         "F.kl_div expects LOG-probabilities as its input: pass F.log_softmax(student / T, dim=1), not softmax"),
        (kl(log_ps, log_pt), "the KL is the wrong way round: the teacher is the target, KL(p_t || p_s); in "
                             "F.kl_div(input, target) the input is the student's log-probabilities"),
        (kl(F.log_softmax(t, 1), F.log_softmax(s, 1)), "divide both the student's and the teacher's logits by T "
                                                       "before the softmax"),
        (kl(log_pt, F.log_softmax(s, 1)), "divide the student's logits by T too"),
        (kl(F.log_softmax(t, 1), log_ps), "divide the teacher's logits by T too"),
    ]
    scales = [(T**2, ""), (T**4, f"you multiplied by T^2 twice (the soft term is {T**2:g}x too big)"),
              (1.0, f"multiply the KL by T^2, so its gradients keep their size whatever T (Hinton et al. 2015, "
                    f"section 2): the soft term is {T**2:g}x too small"),
              (T**2 * n, f"take the batch mean of the KL, F.kl_div(..., reduction='batchmean'): yours is summed "
                         f"over the batch ({n}x too big)"),
              (T**2 / classes, f"reduction='mean' divides by batch x classes ({classes}x too small): use "
                               "reduction='batchmean'")]
    weights = [((alpha, 1 - alpha), ""), ((1 - alpha, alpha), "alpha and 1 - alpha are swapped: here alpha weights "
                                                              "the HARD-label term, KD = alpha * CE + (1 - alpha) * T^2 * KL")]
    ce_terms = [(ce, ""), (ce * n, "the cross-entropy is summed over the batch: take its mean")]
    for (soft, soft_hint), (scale, scale_hint), ((hard_w, soft_w), weight_hint), (hard, ce_hint) in \
            itertools.product(soft_terms, scales, weights, ce_terms):
        value = hard_w * hard + soft_w * scale * soft
        hints = [hint for hint in (soft_hint, scale_hint, weight_hint, ce_hint) if hint]
        if hints and abs(mine - value) <= 1e-4 * max(1.0, abs(value)):
            return "; and ".join(hints)
    if mine < 0:
        return ("a cross-entropy and a KL divergence are never negative, so the loss cannot be: check that F.kl_div "
                "gets the student's LOG-probabilities (F.log_softmax) as its input and the teacher's probabilities "
                "as its target")
    ratio = mine / expected if expected else float("nan")
    return (f"yours is {ratio:.3g}x the reference; compare term by term: alpha * CE(y, s) + (1 - alpha) * T^2 * "
            "KL(softmax(t / T) || softmax(s / T))")


def gap_closure(fn: Callable[[float, float, float], float | None]) -> Report:
    """Check ``fn(teacher_acc, scratch_acc, distilled_acc) -> fraction``:
    (distilled - scratch) / (teacher - scratch), None when there is no gap (teacher <= scratch)."""
    report = Report("gap_closure", checks=5)
    cases = ((0.95, 0.85, 0.90, 0.5), (0.95, 0.85, 0.95, 1.0), (0.90, 0.80, 0.75, -0.5), (0.9, 0.7, 0.7, 0.0))
    for index, (teacher, scratch, distilled, expected) in enumerate(cases):
        what = f"gap_closure(teacher={teacher}, scratch={scratch}, distilled={distilled})"
        value = attempt(report, fn, teacher, scratch, distilled)
        if value is NOT_DONE:
            return report
        if value is FAILED:
            continue
        grade_fraction(report, what, value, expected, f"({distilled} - {scratch}) / ({teacher} - {scratch})", (
            (-expected, "the sign is flipped: (distilled - scratch) / (teacher - scratch)"),
            ((distilled - scratch) / teacher, "divide by the gap (teacher - scratch), not by the teacher's accuracy"),
        ))
    what = "gap_closure(teacher=0.9, scratch=0.9, distilled=0.92): no gap to close"
    value = attempt(report, fn, 0.9, 0.9, 0.92, none_is_stub=False)
    if value is None:
        report.ok(f"{what} -> None")
    elif value is not FAILED and value is not NOT_DONE:
        report.wrong(what, f"got {value!r}: when teacher <= scratch there is no gap; return None (never divide by zero)")
    else:
        report.add_hint("when teacher <= scratch there is no gap: return None before dividing")
    return report
