"""Checks for the prune-then-distill exercises: how much of the lost accuracy came back, and
whether a compressed model meets its targets."""
from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from kdnb.engine.evaluate import evaluate
from kdnb.engine.prune.graph.groups import prunable_weights
from kdnb.exercises.report import FAILED, NOT_DONE, Report, attempt, grade_fraction


def recovered_fraction(fn: Callable[[float, float, float], float]) -> Report:
    """Check ``fn(original_acc, pruned_acc, recovered_acc) -> fraction``: the share of the accuracy that
    pruning lost and fine-tuning (or distillation) won back, (recovered - pruned) / (original - pruned)."""
    report = Report("recovered_fraction", checks=3)
    for original, pruned, recovered, expected in ((0.96, 0.60, 0.87, 0.75), (0.9, 0.5, 0.9, 1.0), (0.9, 0.7, 0.65, -0.25)):
        what = f"recovered_fraction(original={original}, pruned={pruned}, recovered={recovered})"
        value = attempt(report, fn, original, pruned, recovered)
        if value is NOT_DONE:
            return report
        if value is FAILED:
            continue
        grade_fraction(report, what, value, expected, f"({recovered} - {pruned}) / ({original} - {pruned})", (
            (recovered / original, "that is the accuracy kept; the question is how much of the LOST accuracy "
                                   "came back: (recovered - pruned) / (original - pruned)"),
            ((original - recovered) / (original - pruned),
             "that is the share still missing; the recovered share is 1 minus it"),
        ))
    return report


def _nonzero_weights(model: nn.Module) -> int:
    return sum(int((w != 0).sum()) for w in prunable_weights(model).values())


def compression(model: nn.Module, original: nn.Module, val: Iterable, *, max_weights: float = 0.1,
                max_drop: float = 0.03) -> Report:
    """Check a compressed ``model`` against the ``original``: at most ``max_weights`` of its non-zero
    prunable weights, and val accuracy at most ``max_drop`` below it."""
    report = Report("compression", checks=2)
    if model is None or model is Ellipsis:
        report.stub("the compressed model is still None: run your pipeline and pass its model")
        return report
    if not isinstance(model, nn.Module):
        report.wrong("a model", f"pass the compressed nn.Module (e.g. result.student or result.model), got {type(model).__name__}")
        return report
    if model is original:
        report.wrong("a new model", "this is the original model itself: kdnb.prune and kdnb.distill return new models "
                                    "(res.model, res.student)")
        return report
    share = _nonzero_weights(model) / _nonzero_weights(original)
    if share <= max_weights:
        report.ok(f"non-zero weights: {100 * share:.1f}% of the original's (target <= {100 * max_weights:g}%)")
    else:
        report.wrong(f"non-zero weights: {100 * share:.1f}% of the original's",
                     f"the target is <= {100 * max_weights:g}%: prune harder (a higher sparsity)")
    mine, theirs = evaluate(model, val)["accuracy"], evaluate(original, val)["accuracy"]
    if theirs - mine <= max_drop:
        report.ok(f"val accuracy {mine:.4f} vs the original's {theirs:.4f} (allowed drop {max_drop:g})")
    else:
        report.wrong(f"val accuracy {mine:.4f} vs the original's {theirs:.4f}",
                     f"it lost {theirs - mine:.4f}, more than {max_drop:g}: recover for longer (more epochs of "
                     "distillation from the original, or a higher lr), or remove fewer weights")
    return report
