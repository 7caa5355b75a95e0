"""Checks for the pruning exercises: importance criteria, a magnitude mask, sparsity.

The references are kdnb's own criteria (`kdnb.engine.prune.score.criteria`): L1 magnitude (Han et al.
2015), first-order Taylor (Molchanov et al. 2019), Optimal Brain Damage (LeCun et al. 1990) and Optimal
Brain Surgeon's update (Hassibi & Stork 1993).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kdnb.engine.prune.score import criteria
from kdnb.engine.prune.graph.groups import prunable_weights
from kdnb.exercises.report import FAILED, NOT_DONE, Report, as_number, as_tensor, attempt, close, grade_fraction


def _tensor(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _same_ranking(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(torch.argsort(a.flatten(), stable=True), torch.argsort(b.flatten(), stable=True))


def _score_check(report: Report, fn: Callable[..., torch.Tensor], args: tuple[torch.Tensor, ...],
                 expected: torch.Tensor, what: str, mistakes: list[tuple[torch.Tensor, str]]) -> None:
    """Run one importance function on ``args`` and compare with ``expected`` and the usual mistakes."""
    originals = [a.clone() for a in args]
    value = attempt(report, fn, *args)
    if value is NOT_DONE or value is FAILED:
        return
    if any(not torch.equal(a, o) for a, o in zip(args, originals)):
        report.wrong(what, "your function changed its input in place (e.g. .abs_() or *=): "
                           "return a new tensor and leave the weights as they are")
        return
    scores = as_tensor(report, value, what, expected.shape)
    if scores is None:
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            report.add_hint("one score per weight, not one for the whole layer (no .sum() or .mean())")
        return
    if close(scores, expected):
        report.ok(f"{what}: one score per weight, as the formula says")
        return
    for candidate, hint in mistakes:
        if close(scores, candidate):
            report.wrong(what, hint)
            return
    same = " (it ranks the weights the same way, so it would prune the same ones)" if _same_ranking(scores, expected) else ""
    report.wrong(what, f"scores differ from the formula by up to {float((scores - expected).abs().max()):.3g}{same}")


def l1_importance(fn: Callable[[torch.Tensor], torch.Tensor]) -> Report:
    """Check ``fn(weight) -> scores``: s_k = |w_k|, the same shape as ``weight``."""
    report = Report("l1_importance", checks=2)
    for shape in ((8, 5), (4, 3, 3, 3)):
        w = _tensor(len(shape), *shape)
        what = f"l1_importance(weight of shape {shape})"
        _score_check(report, fn, (w,), criteria.l1(w), what, [
            (w, "these are the signed weights: a large negative weight would score lowest and be pruned first; "
                "take the magnitude, weight.abs()"),
            (w.pow(2), "this is the squared magnitude (it ranks the same way); the L1 criterion is |w|: weight.abs()"),
            (-w.abs(), "the sign is flipped: a larger magnitude should give a larger (more important) score"),
        ])
        if report.not_done:
            break
    return report


def taylor_importance(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Report:
    """Check ``fn(weight, grad_sq) -> scores``: s_k = w_k^2 * mean_b(g_kb^2), ``grad_sq`` being mean_b(g_kb^2)."""
    report = Report("taylor_importance", checks=1)
    w, g2 = _tensor(1, 6, 4), _tensor(2, 6, 4).pow(2)
    _score_check(report, fn, (w, g2), criteria.taylor(w, g2), "taylor_importance(weight, grad_sq)", [
        (w * g2, "square the weight too: removing w changes the loss by about g*w, and the score is (g*w)^2 = w^2 * g^2"),
        ((w * g2).abs(), "square the weight: the score is (g*w)^2 = w^2 * grad_sq, not |w| * grad_sq"),
        (w.pow(2) * g2.pow(2), "grad_sq is already the squared gradient: multiply it by w^2 as it is"),
        (w.abs() * g2.sqrt(), "that is |g*w| (the same ranking); the criterion is its square: w^2 * grad_sq"),
        (w.pow(2) * g2.sqrt(), "grad_sq is already squared: use it as it is, without the square root"),
    ])
    return report


def hessian_importance(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Report:
    """Check ``fn(weight, hessian_diag) -> scores``: Optimal Brain Damage, s_k = 1/2 * h_kk * w_k^2."""
    report = Report("hessian_importance", checks=1)
    w, h = _tensor(3, 6, 4), _tensor(4, 6, 4).abs()
    _score_check(report, fn, (w, h), criteria.hessian(w, h), "hessian_importance(weight, hessian_diag)", [
        (h * w.pow(2), "twice the OBD saliency: the second-order term of the Taylor series has a 1/2, s = 1/2 * h * w^2"),
        (0.5 * h * w, "square the weight: setting w to zero moves it by w, and the loss grows by 1/2 * h * w^2"),
        (0.5 * h * w.abs(), "square the weight: the loss grows by 1/2 * h * w^2"),
        (0.5 * h.pow(2) * w.pow(2), "use the Hessian diagonal as it is (h, not h^2): s = 1/2 * h * w^2"),
    ])
    return report


def obs_update(fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]) -> Report:
    """Check ``fn(weight, inverse_hessian, q) -> new_weight``: Optimal Brain Surgeon removes weight ``q`` of one
    output row and moves the others, w <- w - w_q / [H^-1]_qq * H^-1 e_q, so that the new w_q is 0 and the
    layer's squared output error grows by exactly w_q^2 / (2 [H^-1]_qq)."""
    report = Report("obs_update", checks=2)
    x = _tensor(5, 40, 6)
    x[:, 1] += 0.8 * x[:, 0]  # correlated inputs: then the update really moves the other weights
    hessian = 2 * x.T @ x
    inverse = torch.linalg.inv(hessian)
    w, q = _tensor(6, 6), 1
    originals = (w.clone(), inverse.clone())
    what = "obs_update(weight, inverse_hessian, q=1)"
    value = attempt(report, fn, w, inverse, q)
    if value is NOT_DONE or value is FAILED:
        return report
    if not (torch.equal(w, originals[0]) and torch.equal(inverse, originals[1])):
        report.wrong(what, "your function changed its inputs in place: return a new weight (w - ...)")
        return report
    new = as_tensor(report, value, what, w.shape)
    if new is None:
        return report
    expected = w - w[q] / inverse[q, q] * inverse[:, q]
    zeroed = w.clone()
    zeroed[q] = 0
    mistakes = ((zeroed, "that only zeroes w_q (Optimal Brain Damage): OBS also moves the other weights by "
                         "-w_q / [H^-1]_qq * H^-1[:, q]"),
                (w - w[q] / hessian[q, q] * hessian[:, q],
                 "use the INVERSE Hessian: -w_q / [H^-1]_qq * H^-1[:, q]"),
                (w + w[q] / inverse[q, q] * inverse[:, q],
                 "the sign is flipped: the update is w - w_q / [H^-1]_qq * H^-1[:, q]"),
                (w - w[q] * inverse[:, q], "divide by [H^-1]_qq: that is what makes the new w_q exactly 0"))
    if close(new, expected):
        report.ok(f"{what}: w_q is 0 and the others moved to make up for it")
        growth = float((new - w) @ hessian @ (new - w)) / 2
        saliency = float(criteria.obs(w[q], inverse[q, q]))
        report.ok(f"the output error grew by {growth:.4f}, OBS's saliency w_q^2 / (2 [H^-1]_qq) = {saliency:.4f}")
        return report
    for candidate, hint in mistakes:
        if close(new, candidate):
            report.wrong(what, hint)
            return report
    report.wrong(what, f"differs from OBS's update by up to {float((new - expected).abs().max()):.3g}"
                       + (" (your w_q is not 0)" if abs(float(new[q])) > 1e-9 else ""))
    return report


def magnitude_mask(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> Report:
    """Check ``fn(weight, sparsity) -> mask``: True (or 1) keeps a weight; the round(sparsity * n) weights of
    smallest |w| are removed."""
    report = Report("magnitude_mask", checks=2)
    w = _tensor(5, 10, 10)
    for sparsity in (0.7, 0.25):
        what = f"magnitude_mask(weight of shape {tuple(w.shape)}, sparsity={sparsity})"
        value = attempt(report, fn, w.clone(), sparsity)
        if value is NOT_DONE:
            return report
        if value is FAILED:
            continue
        mask = as_tensor(report, value, what, w.shape)
        if mask is None:
            continue
        if not bool(((mask == 0) | (mask == 1)).all()):
            report.wrong(what, "a mask holds only True/False (or 1/0): compare the magnitudes with a threshold")
            continue
        keep = mask.bool()
        removed, expected_removed = int((~keep).sum()), round(sparsity * w.numel())
        if removed != expected_removed:
            hint = (f"sparsity is the fraction REMOVED: remove {expected_removed} of {w.numel()} weights and keep the rest"
                    if removed == w.numel() - expected_removed else
                    f"remove exactly round(sparsity * n) = {expected_removed} weights; yours removes {removed}")
            report.wrong(what, hint)
            continue
        if float(w.abs()[keep].min()) >= float(w.abs()[~keep].max()):
            report.ok(f"{what}: removes the {expected_removed} smallest |w|")
        elif float(w[keep].min()) >= float(w[~keep].max()):
            report.wrong(what, "you ranked by signed value, so large negative weights went: rank by magnitude, weight.abs()")
        elif float(w.abs()[keep].max()) <= float(w.abs()[~keep].min()):
            report.wrong(what, "you kept the smallest weights and removed the largest: True should mark the weights to KEEP")
        else:
            report.wrong(what, "some kept weights are smaller in magnitude than some removed ones")
    return report


def sparsity(fn: Callable[[nn.Module], float]) -> Report:
    """Check ``fn(model) -> fraction``: zero weights / all weights, over the weights of Linear and Conv
    layers only (biases and BatchNorm are not counted), kdnb's definition."""
    report = Report("sparsity", checks=1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    with torch.no_grad():
        model[0].weight[:, :4] = 0  # 80 zeros
        model[2].weight[:2] = 0     # 40 zeros
        model[0].bias[:5] = 0       # zeros in a bias do not count
    weights = prunable_weights(model).values()
    zeros, total = sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)
    expected = zeros / total
    everything = list(model.parameters())
    all_zeros = sum(int((p == 0).sum()) for p in everything) / sum(p.numel() for p in everything)
    what = "sparsity(a 2-layer MLP with 120 of its 300 weights zero)"
    value = attempt(report, fn, model)
    if value is NOT_DONE or value is FAILED:
        return report
    grade_fraction(report, what, value, expected, f"{zeros} zero weights / {total} weights", (
        (1 - expected, "that is the density (the fraction of NON-zero weights): sparsity = zeros / total"),
        (all_zeros, "you counted the biases too: sparsity counts the weights of Linear and Conv layers only "
                    "(iterate over modules and use module.weight)"),
    ))
    return report
