"""The arguments of `prune`, `importance` and `sensitivity`, each checked once at the entry, before anything
is copied, traced or trained: a bad value is one `KdnbError` line naming the argument, the value and the fix.

What needs the model (the data's first batch through it, labels in range, something to train) is checked here
too, so a criterion, the calibration or the fine-tuning never meets a batch the model cannot take.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from kdnb.engine import checks
from kdnb.engine.device import resolve_device
from kdnb.engine.loop import SETTINGS, Settings
from kdnb.engine.prune.graph.groups import PRUNABLE
from kdnb.engine.prune.schedule import schedules
from kdnb.engine.prune.score import calibration
from kdnb.engine.prune.score.criteria import REGISTRY
from kdnb.engine.prune.score.estimate import ESTIMATORS
from kdnb.engine.prune.select.latency import PRUNE_SCOPES
from kdnb.errors import KdnbError, is_integer, is_number

GRADIENT_STATISTICS = ("grad_sq", "hessian_diag", "group_gradient_weight")  # a backward pass over labelled data
TRAINING_STATISTICS = ("batchnorm_scale",)  # network slimming trains first
CHANNEL_SCOPES = {  # the scopes that rank whole channels, and why single weights cannot have them
    "macs": "ranks channels by their score per MAC their removal saves",
    "latency": "times the model with channels deleted (single zeroed weights run at dense speed)",
}


def check_sparsity(value: Any, name: str = "sparsity") -> float:
    """A fraction of the prunable weights to remove, in [0, 1)."""
    return checks.check_fraction(name, value, example="0.5")


def check_pattern_text(pattern: Any) -> None:
    """None or ``"N:M"`` with 0 < N < M."""
    if pattern is None:
        return
    parts = pattern.split(":") if isinstance(pattern, str) else []
    numbers = [int(p) for p in parts if p.strip().isdigit()] if len(parts) == 2 else []
    if len(numbers) != 2 or not 0 < numbers[0] < numbers[1]:
        raise KdnbError(f"pattern should be 'N:M' (keep N of every M consecutive weights, 0 < N < M), got "
                        f"{checks.shown(pattern)}; pass e.g. pattern='2:4' with sparsity=0.5")


def check_round_to(round_to: Any, structured: bool) -> None:
    """``round_to``: None, or a positive channel count, and only for a structured cut."""
    if round_to is None:
        return
    if not (is_integer(round_to) and round_to >= 1):
        raise KdnbError(f"round_to should be a positive number of channels, got {checks.shown(round_to)}; pass e.g. "
                        "round_to=8")
    if not structured:
        raise KdnbError("round_to rounds the channels a structured cut keeps: pass structured=True, or leave "
                        "round_to out")


def check_scope(scope: Any, structured: bool, max_layer_sparsity: Any, choices: Iterable[str]) -> None:
    """``scope`` one of ``choices``, a channel ranking only with ``structured``; ``max_layer_sparsity`` None or, with
    ``structured``, a fraction in (0, 1]. For `prune` and `masks_at` (``structured``: the scores')."""
    checks.check_choice("scope", scope, choices)
    if scope in CHANNEL_SCOPES and not structured:
        raise KdnbError(f"scope={scope!r} {CHANNEL_SCOPES[scope]}: it needs structured=True; for single weights "
                        "use scope='global' or 'local'")
    if max_layer_sparsity is None:
        return
    if not (is_number(max_layer_sparsity) and 0 < max_layer_sparsity <= 1):  # NaN fails both comparisons
        raise KdnbError(f"max_layer_sparsity should be a number in (0, 1] -- the most of any layer's channels a "
                        f"structured cut removes -- got {checks.shown(max_layer_sparsity)}; pass e.g. "
                        "max_layer_sparsity=0.5")
    if not structured:
        raise KdnbError("max_layer_sparsity caps the channels a structured cut removes from each layer: pass "
                        "structured=True, or for single weights use scope='local' (the same sparsity in every layer)")


def check_prunable(model: nn.Module) -> None:
    """At least one Linear or Conv layer: the weights sparsity counts."""
    if not any(isinstance(m, PRUNABLE) and isinstance(getattr(m, "weight", None), torch.Tensor)
               for m in model.modules()):
        raise KdnbError(f"{type(model).__name__} has no prunable layers (pruning removes weights of nn.Linear and "
                        "nn.Conv1d/2d/3d layers); pass a model that has some, e.g. kdnb.models.mlp(64, [256], 10)")


def check_settings(options: dict[str, Any]) -> None:
    """The training settings every verb takes (`kdnb.engine.loop.Settings`), and the device name."""
    Settings(**{name: options[name] for name in SETTINGS})
    resolve_device(options["device"])


LEAST_SQUARES = "least_squares"  # reconstruct=: every layer by least squares, the output layer too


def check_prune_options(options: dict[str, Any]) -> None:
    """Every argument of `prune` on its own terms (types and ranges), before any is combined with another."""
    check_sparsity(options["sparsity"])
    for name in ("structured", "inplace", "prune_again", "control", "distill"):
        checks.check_bool(name, options[name])
    if options["reconstruct"] is not None and not (isinstance(options["reconstruct"], str)
                                                   and options["reconstruct"] == LEAST_SQUARES):
        try:
            checks.check_bool("reconstruct", options["reconstruct"])  # numpy's bools too, as before
        except KdnbError:
            raise KdnbError(f"reconstruct should be True, False or {LEAST_SQUARES!r}, got "
                            f"{checks.shown(options['reconstruct'])}; pass reconstruct=True (the default with data), "
                            f"reconstruct={LEAST_SQUARES!r} (no fit of the output layer to the predictions) or False"
                            ) from None
    if not isinstance(options["criterion"], str):
        raise KdnbError(f"criterion should be a name, got {checks.shown(options['criterion'])}; pass e.g. "
                        "criterion='auto' (see kdnb.engine.prune.score.criteria.names())")
    check_scope(options["scope"], options["structured"], options["max_layer_sparsity"], PRUNE_SCOPES)
    checks.check_choice("schedule", options["schedule"], schedules.SCHEDULES)
    checks.check_choice("hessian_estimator", options["hessian_estimator"], ESTIMATORS)
    check_pattern_text(options["pattern"])
    checks.check_count("finetune", options["finetune"], 0, example="3")
    if options["steps"] is not None:
        checks.check_count("steps", options["steps"], 1, example="3")
    checks.check_count("slimming_epochs", options["slimming_epochs"], 0, example="2")
    checks.check_fraction("slimming_l1", options["slimming_l1"], 0.0, math.inf, example="1e-3")
    if options["weight_decay"] is not None:
        checks.check_fraction("weight_decay", options["weight_decay"], 0.0, math.inf, example="1.0")
    checks.check_count("calibration_samples", options["calibration_samples"], 1, example="2048")
    checks.check_temperature(options["temperature"])
    checks.check_fraction("alpha", options["alpha"], closed=True, example="0.5")
    if options["example"] is not None:
        checks.check_example(options["example"], empty=True)  # tracing an empty batch is the tracer's to refuse
    check_settings(options)


def check_inputs(model: nn.Module, data: Iterable | None, val: Iterable | None, statistic: str | None,
                 trains: bool, structured: bool = False, example: torch.Tensor | None = None) -> None:
    """The model against what it will be given: ``data``'s and ``val``'s first batch through it, labels where
    a gradient or a training run needs them, trainable parameters for those, a tensor output where structured
    pruning compares outputs (an ``example`` the forward fails on is left to the tracer, which names the layer)."""
    needs_gradients = statistic in GRADIENT_STATISTICS + TRAINING_STATISTICS or trains
    why = "fine-tuning" if trains else f"a gradient-based criterion ({statistic})"
    if needs_gradients:
        checks.check_trainable([p for p in model.parameters() if p.requires_grad])
    compared = "structured pruning (it compares the model's outputs)" if structured else None
    if data is not None:
        checks.check_data_fits(model, data, "data", labels=why if needs_gradients else None, tensor=compared)
    if example is not None and structured:
        with checks.eval_mode(model), torch.no_grad():
            try:
                out = model(example.to(checks.model_device(model)))
            except Exception:  # noqa: BLE001 - the tracer runs it again and names the failing layer
                out = torch.empty(0)
        checks.check_tensor_output(out, compared)
    if val is not None:
        checks.check_data_fits(model, val, "val", labels="the val accuracy")


def _statistic(criterion: str) -> str | None:
    record = REGISTRY.get(criterion)
    return record.statistic if record is not None else None


def check_importance(model: Any, criterion: Any, data: Any, structured: Any, example: Any, seed: Any,
                     hessian_estimator: Any, slimming_epochs: Any, slimming_l1: Any, lr: Any, device: Any,
                     callbacks: Any, calibration_samples: Any) -> None:
    """Every argument of `importance` (the explorer scores with it), once, before the model is copied."""
    checks.check_model(model)
    check_prunable(model)
    if not isinstance(criterion, str):
        raise KdnbError(f"criterion should be a name, got {checks.shown(criterion)}; pass e.g. criterion='l1'")
    checks.check_bool("structured", structured)
    checks.check_choice("hessian_estimator", hessian_estimator, ESTIMATORS)
    checks.check_count("slimming_epochs", slimming_epochs, 0, example="2")
    checks.check_count("calibration_samples", calibration_samples, 1, example="2048")
    checks.check_fraction("slimming_l1", slimming_l1, 0.0, math.inf, example="1e-3")
    if example is not None:
        checks.check_example(example, empty=True)
    check_settings({"optimizer": None, "lr": lr, "scheduler": None, "amp": False, "grad_clip": None,
                    "device": device, "seed": seed, "callbacks": callbacks})
    if seed is None:
        raise KdnbError("seed should be an integer (it seeds the random criterion and Hutchinson's probes), got "
                        "None; pass e.g. seed=0")
    check_inputs(model, data, None, _statistic(criterion), trains=False, structured=structured, example=example)


def check_sensitivity(model: Any, val: Any, options: dict[str, Any]) -> list[float]:
    """Every argument of `sensitivity`; returns the sparsities as floats."""
    sparsities = options["sparsities"]
    if isinstance(sparsities, (str, bytes)) or not isinstance(sparsities, Iterable):
        raise KdnbError(f"sparsities should be a list of fractions in [0, 1), got {checks.shown(sparsities)}; "
                        "pass e.g. sparsities=[0.5, 0.9]")
    sparsities = list(sparsities)
    if not sparsities:
        raise KdnbError("sparsities is empty; pass the sparsities to try, e.g. sparsities=[0.5, 0.9]")
    values = [check_sparsity(s, f"sparsities[{i}]") for i, s in enumerate(sparsities)]
    layers = options["layers"]
    if layers is not None and (isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable)
                               or not list(layers) or not all(isinstance(n, str) for n in layers)):
        raise KdnbError(f"layers should be None (every layer) or a non-empty list of names, got "
                        f"{checks.shown(layers)}; pass e.g. layers=['0.weight'] (see model.named_parameters())")
    checks.check_model(model)
    checks.check_data_fits(model, val, "val", labels="sensitivity (it measures val accuracy)")
    check_importance(model, options["criterion"], options["data"], options["structured"], options["example"],
                     options["seed"], "fisher", 2, 1e-3, options["lr"], options["device"], options["callbacks"],
                     calibration.SAMPLES)
    check_settings(options)
    return values
