"""Checks for the distillation exercises: soft labels, the KD loss, gap closure.

The references are kdnb's own: `kdnb.engine.distill.losses` (Hinton et al. 2015). Each wrong answer
is compared with the usual mistakes so the hint can name the one made.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from kdnb.engine.distill import losses
from kdnb.exercises.report import FAILED, NOT_DONE, Report, as_number, as_tensor, attempt, close, grade_fraction


def _logits(seed: int, rows: int = 6, classes: int = 10, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, classes, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def soft_labels(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> Report:
    """Check ``fn(logits, temperature) -> probabilities``: p^T = softmax(logits / T) over the classes (dim 1)."""
    report = Report("soft_labels")
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
        if float(hot.max(1).values.mean()) < float(cold.max(1).values.mean()):
            report.ok("a higher temperature gives softer labels (a lower top probability)")
    return report


def kd_loss(fn: Callable[..., torch.Tensor]) -> Report:
    """Check ``fn(student_logits, teacher_logits, labels, temperature, alpha) -> scalar loss``:

        KD = alpha * CE(y, s) + (1 - alpha) * T^2 * KL(p_t^T || p_s^T),   batch mean

    (alpha weights the hard-label term, as in `kdnb.engine.distill.losses.kd`).
    """
    report = Report("kd_loss")
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
    """Name the likely mistake by recomputing the loss with each usual mistake."""
    T, n = temperature, len(s)
    log_ps, log_pt = F.log_softmax(s / T, 1), F.log_softmax(t / T, 1)
    kl = lambda a, b: float((a.exp() * (a - b)).sum(1).mean())  # noqa: E731 - KL(exp(a) || exp(b)), batch mean
    ce = float(F.cross_entropy(s, y))
    soft = T**2 * kl(log_pt, log_ps)
    mistakes = [
        (alpha * ce + (1 - alpha) * T**4 * kl(log_pt, log_ps), f"your soft term is {T**2:g}x too big: did you multiply by T^2 twice?"),
        (alpha * ce + (1 - alpha) * kl(log_pt, log_ps), f"your soft term is {T**2:g}x too small: multiply the KL by T^2, "
         "so its gradients keep their size whatever T (Hinton et al. 2015, section 2)"),
        ((1 - alpha) * ce + alpha * soft, "alpha and 1 - alpha are swapped: here alpha weights the HARD-label term, "
         "KD = alpha * CE + (1 - alpha) * T^2 * KL"),
        (alpha * ce + (1 - alpha) * T**2 * kl(log_ps, log_pt), "the KL is the wrong way round: the teacher is the "
         "target, KL(p_t || p_s); in F.kl_div(input, target) the input is the student's log-probabilities"),
        (alpha * ce + (1 - alpha) * T**2 * kl(F.log_softmax(t, 1), F.log_softmax(s, 1)),
         "divide both the student's and the teacher's logits by T before the softmax"),
        (alpha * ce + (1 - alpha) * T**2 * kl(log_pt, F.log_softmax(s, 1)), "divide the student's logits by T too"),
        (alpha * ce + (1 - alpha) * T**2 * kl(F.log_softmax(t, 1), log_ps), "divide the teacher's logits by T too"),
        (alpha * ce + (1 - alpha) * soft * n, f"your soft term is {n}x too big (the batch size): take the batch mean, "
         "F.kl_div(..., reduction='batchmean')"),
        (alpha * ce + (1 - alpha) * soft / s.shape[1], f"your soft term is {s.shape[1]}x too small (the number of classes): "
         "reduction='mean' divides by batch x classes; use reduction='batchmean'"),
        (alpha * ce * n + (1 - alpha) * soft, "the cross-entropy is summed over the batch: take its mean"),
        (alpha * ce + (1 - alpha) * T**2 * float((F.softmax(t / T, 1) * (log_pt - F.softmax(s / T, 1))).sum(1).mean()),
         "F.kl_div expects LOG-probabilities as its input: pass F.log_softmax(student / T, dim=1)"),
    ]
    for value, hint in mistakes:
        if abs(mine - value) <= 1e-4 * max(1.0, abs(value)):
            return hint
    ratio = mine / expected if expected else float("nan")
    return (f"yours is {ratio:.3g}x the reference; compare term by term: alpha * CE(y, s) + (1 - alpha) * T^2 * "
            "KL(softmax(t / T) || softmax(s / T))")


def gap_closure(fn: Callable[[float, float, float], float | None]) -> Report:
    """Check ``fn(teacher_acc, scratch_acc, distilled_acc) -> fraction``:
    (distilled - scratch) / (teacher - scratch), None when there is no gap (teacher <= scratch)."""
    report = Report("gap_closure")
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
        report.lines[-1] += " -- when teacher <= scratch there is no gap: return None before dividing"
    return report
