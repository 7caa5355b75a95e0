"""Feature taps for FitNets and attention transfer: layers are named, never rewritten.

A `Tap` records the outputs of named modules through forward hooks, so the user's forward() stays
as it is. Before training, `plan_features` runs teacher and student once on a batch (the dry run),
checks every (teacher_layer, student_layer) pair and builds an adapter where the shapes differ.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kdnb.errors import KdnbError, suggest
from kdnb.engine.device import eval_mode

FeaturePairs = Sequence[tuple[str, str]]


class Tap:
    """Records ``outputs[name]`` each time the named modules of ``model`` run; `remove` unhooks them."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        modules = dict(model.named_modules())
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [modules[name].register_forward_hook(self._recorder(name)) for name in names]

    def _recorder(self, name: str) -> Any:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            self.outputs[name] = output

        return record

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles, self.outputs = [], {}


@torch.no_grad()
def output_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """The output shape of every named module of ``model`` on input ``x`` (one dry run, eval mode)."""
    names = [name for name, _ in model.named_modules() if name]
    tap = Tap(model, names)
    try:
        with eval_mode(model):
            model(x)
        return {name: tuple(out.shape) for name, out in tap.outputs.items() if isinstance(out, torch.Tensor)}
    finally:
        tap.remove()


def describe(shapes: dict[str, tuple[int, ...]], limit: int = 12) -> str:
    """'name (shape), ...' for an error message, the first ``limit`` modules."""
    items = [f"{name} {tuple(shape[1:])}" for name, shape in shapes.items()]
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def adapter(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module | None:
    """A learned map from the student's feature shape to the teacher's (channels first), or None.

    Same shape: None (no adapter). (N, C) -> Linear; (N, C, L) -> 1x1 Conv1d; (N, C, H, W) -> 1x1 Conv2d;
    (N, T, C) tokens that differ only in their last dim (a transformer block's output) -> Linear on C.
    Returns None too when no such map exists (different spatial size); the caller reports it.
    """
    if student_shape == teacher_shape:
        return None
    if len(student_shape) == 3 and student_shape[:2] == teacher_shape[:2]:  # channels last: nn.Linear maps dim -1
        return nn.Linear(student_shape[2], teacher_shape[2])
    if len(student_shape) != len(teacher_shape) or student_shape[2:] != teacher_shape[2:]:
        return None
    cin, cout = student_shape[1], teacher_shape[1]
    if len(student_shape) == 2:
        return nn.Linear(cin, cout)
    if len(student_shape) == 3:
        return nn.Conv1d(cin, cout, kernel_size=1)
    if len(student_shape) == 4:
        return nn.Conv2d(cin, cout, kernel_size=1)
    return None


def check_names(pairs: Any, method: str) -> list[tuple[str, str]]:
    """``features`` as a list of (teacher_layer, student_layer) name pairs; one pair may come bare."""
    if pairs is None:
        raise KdnbError(f"method={method!r} needs features=[(teacher_layer, student_layer)]: pass the module names "
                        "whose outputs to match (see model.named_modules())")
    if isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(p, str) for p in pairs):
        pairs = [pairs]
    ok = isinstance(pairs, (list, tuple)) and pairs and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(n, str) for n in p) for p in pairs)
    if not ok:
        raise KdnbError(f"features should be a list of (teacher_layer, student_layer) name pairs, got {pairs!r}; "
                        "pass e.g. features=[('1', '1')]")
    return [(t, s) for t, s in pairs]


def plan_features(teacher: nn.Module, student: nn.Module, x: torch.Tensor, pairs: FeaturePairs,
                  method: str) -> nn.ModuleList:
    """Dry run on ``x``: check every layer pair and return one adapter (or Identity) per pair.

    FitNets compares the features themselves, so channels may differ (an adapter maps them) but
    spatial sizes must match; attention transfer compares channel-summed maps, so only the
    spatial sizes must match and it needs no adapter.
    """
    shapes = {"teacher": output_shapes(teacher, x), "student": output_shapes(student, x)}
    adapters = nn.ModuleList()
    for names in pairs:
        for role, name in zip(("teacher", "student"), names):
            if name not in shapes[role]:
                raise KdnbError(f"the {role} has no module named {name!r}; {suggest(name, shapes[role])} "
                                f"({role} modules with output shapes: {describe(shapes[role])})")
        t_shape, s_shape = shapes["teacher"][names[0]], shapes["student"][names[1]]
        if method == "at":
            if len(t_shape) < 3 or t_shape[2:] != s_shape[2:]:
                raise KdnbError(f"attention transfer needs feature maps (N, C, *spatial) of the same spatial "
                                "size (pick conv layers); "
                                f"teacher {names[0]!r} gives {t_shape[1:]}, student {names[1]!r} gives {s_shape[1:]} "
                                f"(student modules with output shapes: {describe(shapes['student'])})")
            adapters.append(nn.Identity())
            continue
        made = adapter(s_shape, t_shape)
        if made is None and s_shape != t_shape:
            raise KdnbError(f"cannot adapt student {names[1]!r} {s_shape[1:]} to teacher {names[0]!r} {t_shape[1:]}: "
                            f"spatial sizes differ; pick layers at the same resolution "
                            f"(student modules with output shapes: {describe(shapes['student'])})")
        adapters.append(made if made is not None else nn.Identity())
    return adapters
