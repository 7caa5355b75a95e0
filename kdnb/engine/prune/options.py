"""`kdnb.prune`'s keywords, parsed once into frozen records with every "auto" resolved: what to cut (`Cut`), how
to rebuild what is kept (`Rebuild`), when to prune how much (`Schedule`), distillation while fine-tuning
(`Teacher`) and the training `Settings`. Each argument is checked here, once, before anything is copied, traced
or trained, by the one validator of that argument (`kdnb.engine.checks`); the layers below trust the records.

What needs the model (the data's first batch through it, labels in range, something to train) is checked here
too, so a criterion, the calibration or the fine-tuning never meets a batch the model cannot take.

The records are public: a script that runs many prunes can build them once and read what "auto" chose.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdnb.engine import checks
from kdnb.engine.device import resolve_device, to_device
from kdnb.engine.loop import Settings
from kdnb.engine.batches import call_example, example_of
from kdnb.engine.prune.cut.masks import mask_sparsity
from kdnb.engine.prune.graph.groups import PRUNABLE, check_structured_support
from kdnb.engine.prune.result import PruneResult
from kdnb.engine.prune.schedule import budget, decay, schedules
from kdnb.engine.prune.score import calibration, criteria
from kdnb.engine.prune.score.estimate import ESTIMATORS
from kdnb.engine.prune.select.latency import PRUNE_SCOPES
from kdnb.engine.prune.select.patterns import parse_pattern, pattern_misfits
from kdnb.errors import KdnbError, is_integer, is_number, warn

MARKER = "kdnb_pruned"  # attribute a pruned model carries: the list of prunings it went through
LEAST_SQUARES = "least_squares"  # reconstruct=: every layer by least squares, the output layer too
# criterion="auto": the best of bench/prune_oneshot.py (reconstructing, with data) for weights and for channels;
# "l1" for channels without data, or for a model whose channels group OBS cannot all score (`Cut.fallback`)
DEFAULT_CRITERION = {False: "lamp", True: "thinet"}
GRADUAL_CRITERION = "hessian"  # the best of bench/prune_sparsity.py's gradual schedules (masked, fine-tuned)
# an N:M pattern re-solved on data: SparseGPT's N:M sweep (bench/prune_oneshot.py --part pattern)
PATTERN_CRITERION = "obs"
DEFAULT_ROUNDS = 8  # re-scored cuts of a structured one-shot prune with reconstruction (bench/prune_oneshot.py)
# single-weight criteria whose re-scored rounds keep only weights on an input-output path (`connected`; a single
# cut is SparseGPT's sweep), and their default rounds in a one-shot prune with reconstruction from CONNECTED_FROM
# sparsity on (bench/prune_sparsity.py)
CONNECTED, CONNECTED_ROUNDS, CONNECTED_FROM = ("obs",), 16, 0.98
CHANNEL_SCOPES = {  # the scopes that rank whole channels, and why single weights cannot have them
    "macs": "ranks channels by their score per MAC their removal saves",
    "latency": "times the model with channels deleted (single zeroed weights run at dense speed)",
}


@dataclass(frozen=True, kw_only=True)
class Cut:
    """What to cut: ``sparsity`` of the prunable weights, by ``criterion`` (never "auto" here), as single weights
    or whole channels (``structured``), ranked by ``scope``, in ``pattern`` ("N:M") or under ``max_layer_sparsity``,
    keeping a multiple of ``round_to`` channels per layer.
    ``fallback``: for ``criterion="auto"``, what scores every layer where the chosen criterion cannot (channels
    "l1", weights "lamp"); None: a criterion asked for by name keeps its scores."""

    sparsity: float
    criterion: str
    structured: bool = False
    scope: str = "global"
    pattern: str | None = None
    max_layer_sparsity: float | None = None
    round_to: int | None = None
    fallback: str | None = None
    hessian_estimator: str = "fisher"
    slimming_epochs: int = 2
    slimming_l1: float = 1e-3

    @property
    def nm(self) -> tuple[int, int] | None:
        """The pattern as (N, M), or None."""
        return parse_pattern(self.pattern)


@dataclass(frozen=True, kw_only=True)
class Rebuild:
    """How what is kept is re-solved on data: at all (``reconstruct``), at every step (``every_step``: asked for
    by name, or one shot; otherwise a gradual step when `schedules.resolves` says so), with the output layer fitted
    to the dense predictions at the last cut (``predictions``), in ``rounds`` re-scored cuts per step, on the first
    ``calibration_samples`` samples."""

    reconstruct: bool
    every_step: bool
    predictions: bool
    rounds: int
    calibration_samples: int = calibration.SAMPLES


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """When to prune how much: ``kind`` ("oneshot", "iterative", "agp"; never "auto" here) in ``steps``, with
    ``finetune`` epochs (per round for "iterative", the whole run for "agp"), the default optimizer's decoupled
    ``weight_decay`` (resolved), and a ``control`` run of the unpruned model."""

    kind: str
    steps: int
    finetune: int = 0
    weight_decay: float = 0.0
    control: bool = False


@dataclass(frozen=True, kw_only=True)
class Teacher:
    """Fine-tuning distilled from the unpruned model (Hinton KD)."""

    temperature: float = 4.0
    alpha: float = 0.5


@dataclass(frozen=True, kw_only=True)
class PruneOptions:
    """Everything one `kdnb.prune` call decided at its entry. ``settings.device`` is resolved; ``example`` is the
    input that traces the model (given, or the first batch of the data; None without either)."""

    cut: Cut
    rebuild: Rebuild
    schedule: Schedule
    teacher: Teacher | None
    settings: Settings
    inplace: bool = False
    example: torch.Tensor | None = None


def parse_prune(model: Any, sparsity: Any, data: Any, val: Any, *, criterion: Any, structured: Any, scope: Any,
                max_layer_sparsity: Any, pattern: Any, reconstruct: Any, rounds: Any, finetune: Any, schedule: Any,
                steps: Any, distill: Any, inplace: Any, example: Any, prune_again: Any, control: Any,
                round_to: Any, temperature: Any, alpha: Any, slimming_epochs: Any, slimming_l1: Any,
                hessian_estimator: Any, calibration_samples: Any, weight_decay: Any, settings: Settings) -> PruneOptions:
    """`kdnb.prune`'s keywords as records, each checked once; a one-line `KdnbError` names the problem and the fix."""
    if isinstance(model, PruneResult):
        raise KdnbError("got a PruneResult; pass its .model (with prune_again=True) to prune it further")
    checks.check_model(model)
    check_prunable(model)
    sparsity = checks.check_sparsity(sparsity)
    for name, value in (("structured", structured), ("inplace", inplace), ("prune_again", prune_again),
                        ("control", control), ("distill", distill)):
        checks.check_bool(name, value)
    check_reconstruct(reconstruct)
    if not isinstance(criterion, str):
        raise KdnbError(f"criterion should be a name, got {checks.shown(criterion)}; pass e.g. "
                        "criterion='auto' (see kdnb.engine.prune.score.criteria.names())")
    check_scope(scope, structured, max_layer_sparsity, PRUNE_SCOPES)
    check_round_to(round_to, structured)
    checks.check_choice("schedule", schedule, schedules.SCHEDULES)
    checks.check_choice("hessian_estimator", hessian_estimator, ESTIMATORS)
    checks.check_pattern(pattern)
    checks.check_count("finetune", finetune, 0, example="3")
    if steps is not None:
        checks.check_count("steps", steps, 1, example="3")
    checks.check_count("slimming_epochs", slimming_epochs, 0, example="2")
    checks.check_fraction("slimming_l1", slimming_l1, 0.0, float("inf"), example="1e-3")
    if weight_decay is not None:
        checks.check_fraction("weight_decay", weight_decay, 0.0, float("inf"), example="1.0")
    checks.check_count("calibration_samples", calibration_samples, 1, example="2048")
    checks.check_temperature(temperature)
    checks.check_fraction("alpha", alpha, closed=True, example="0.5")
    if example is not None:
        checks.check_example(example, empty=True)  # tracing an empty batch is the tracer's to refuse
    settings = dataclasses.replace(settings, device=resolve_device(settings.device))
    plan = parse_schedule(model, sparsity, schedule, steps, finetune, structured, pattern, data, control, distill,
                          weight_decay, settings)
    name = default_criterion(structured, plan.kind, pattern, data, reconstruct) if criterion == "auto" else criterion
    record = check_criterion(name, data, model, structured)
    for loader, what in ((data, "data"), (val, "val")):
        if loader is not None:
            checks.check_loader(loader, what)
    if getattr(model, MARKER, None) and not prune_again:
        last = getattr(model, MARKER)[-1]
        raise KdnbError(f"this model is already pruned (sparsity {last['sparsity']:.4f}, {last['criterion']}); "
                        "pass prune_again=True to prune it further")
    check_masks_grow(model, sparsity, structured)
    first = checks.first_batch(data) if data is not None else None  # drawn once: checked, then traced
    check_inputs(model, data, val, record.statistic, bool(finetune or control), structured, example, first)
    check_model_pattern(model, pattern, sparsity, structured)
    rebuild = parse_rebuild(reconstruct, rounds, data, plan, structured, record, sparsity, pattern,
                            calibration_samples)
    if structured:
        check_structured_support(model)
        if example is None and data is None:
            raise KdnbError("structured pruning needs an example input to trace the model: pass data= "
                            "(its first batch is used) or example=torch.randn(1, ...)")
    if example is None and first is not None:
        example = example_of(first)
    if rounds is None and rebuild.rounds > 1 and structured:  # as many as their calibration passes afford: eight
        # on the tutorials' networks, one on a ResNet at 224x224 (`budget.ROUNDS_FLOPS`)
        rebuild = dataclasses.replace(rebuild, rounds=budget.affordable_rounds(model, example, data,
                                                                               calibration_samples, rebuild.rounds))
    fallback = ("l1" if structured else DEFAULT_CRITERION[False]) if criterion == "auto" else None
    cut = Cut(sparsity=sparsity, criterion=name, structured=structured, scope=scope, pattern=pattern,
              max_layer_sparsity=max_layer_sparsity, round_to=round_to, fallback=fallback,
              hessian_estimator=hessian_estimator,
              slimming_epochs=slimming_epochs, slimming_l1=slimming_l1)
    teacher = Teacher(temperature=float(temperature), alpha=float(alpha)) if distill else None
    return PruneOptions(cut=cut, rebuild=rebuild, schedule=plan, teacher=teacher, settings=settings,
                        inplace=inplace, example=example)


def parse_schedule(model: nn.Module, sparsity: float, kind: str, steps: int | None, finetune: int, structured: bool,
                   pattern: str | None, data: Any, control: bool, distill: bool, weight_decay: float | None,
                   settings: Settings) -> Schedule:
    """The schedule with "auto" resolved (`schedules.resolve`), its steps, and the fine-tuning's weight decay."""
    kind = schedules.resolve(kind, sparsity, finetune, structured, pattern)
    steps = schedules.DEFAULT_STEPS[kind] if steps is None else steps
    if kind == "oneshot" and steps != 1:
        raise KdnbError(f"schedule 'oneshot' prunes in one step, got steps={steps}; use schedule='iterative' or 'agp'")
    if kind == "agp" and finetune < 1:
        raise KdnbError("schedule 'agp' prunes gradually during fine-tuning: set finetune >= 1 (epochs)")
    if (finetune or control) and data is None:
        raise KdnbError("fine-tuning needs data: pass data=train_loader, or finetune=0")
    if distill and not finetune:
        raise KdnbError("distill=True fine-tunes with the unpruned model as teacher: set finetune >= 1")
    if isinstance(settings.optimizer, torch.optim.Optimizer):
        raise KdnbError("prune fine-tunes a copy of the model, so an optimizer built on the model's parameters "
                        "would train nothing: pass a factory, e.g. optimizer=lambda p: torch.optim.SGD(p, lr=0.1)")
    if weight_decay is None:
        weight_decay = decay.default(model, kind, finetune) if settings.optimizer is None else 0.0
    elif settings.optimizer is not None:
        raise KdnbError("weight_decay sets the default optimizer's (AdamW) decay, but optimizer= is given: set the "
                        "decay in your optimizer instead, e.g. "
                        "optimizer=lambda p: torch.optim.AdamW(p, weight_decay=1.0)")
    return Schedule(kind=kind, steps=steps, finetune=finetune, weight_decay=float(weight_decay), control=control)


def default_criterion(structured: bool, schedule: str, pattern: str | None, data: Any, reconstruct: Any) -> str:
    """What ``criterion="auto"`` stands for: channels "thinet" with data, else "l1"; single weights "lamp" in
    one shot ("obs" for an N:M pattern re-solved on data), "hessian" (raw OBD scores ranked globally) in a
    gradual schedule (bench/prune_oneshot.py, bench/prune_sparsity.py)."""
    if structured:
        return DEFAULT_CRITERION[True] if data is not None else "l1"
    if schedule != "oneshot":
        return GRADUAL_CRITERION
    if pattern is not None and data is not None and reconstruct is not False:
        return PATTERN_CRITERION
    return DEFAULT_CRITERION[False]


def parse_rebuild(reconstruct: bool | str | None, rounds: int | None, data: Any, plan: Schedule, structured: bool,
                  record: criteria.Criterion, sparsity: float, pattern: str | None,
                  calibration_samples: int) -> Rebuild:
    """Whether and how the kept weights are re-solved, ``reconstruct=None`` and ``rounds=None`` resolved."""
    if reconstruct is None:  # a gradual step re-solves when little training follows it (`schedules.resolves`)
        last = schedules.epochs_left(plan.kind, plan.finetune, plan.steps, plan.steps)
        resolved = data is not None and (plan.kind == "oneshot" or schedules.resolves(last))
    elif reconstruct and data is None:
        raise KdnbError(f"reconstruct={reconstruct!r} re-solves the kept weights on calibration samples: pass "
                        "data=train_loader (or reconstruct=False)")
    else:
        resolved = bool(reconstruct)
    if rounds is None:
        rounds = default_rounds(resolved and plan.kind == "oneshot", plan, structured, record, sparsity, pattern)
    checks.check_positive("rounds", rounds, integer=True)
    # the last cut fits the output layer to the dense predictions unless least squares are asked for, and only
    # before a short fine-tuning (`schedules.RESOLVE_BELOW`): a long one recovers more from a least-squares layer
    predictions = reconstruct != LEAST_SQUARES and plan.finetune < schedules.RESOLVE_BELOW
    return Rebuild(reconstruct=resolved, every_step=reconstruct is not None or plan.kind == "oneshot",
                   predictions=predictions, rounds=rounds, calibration_samples=calibration_samples)


def default_rounds(oneshot_refit: bool, plan: Schedule, structured: bool, record: criteria.Criterion,
                   sparsity: float, pattern: str | None) -> int:
    """``rounds=None``: `CONNECTED_ROUNDS` for a one-shot "obs" refit of single weights from `CONNECTED_FROM` on,
    `DEFAULT_ROUNDS` for a structured one-shot refit without fine-tuning, else 1."""
    if not structured and oneshot_refit and record.name in CONNECTED and pattern is None \
            and sparsity >= CONNECTED_FROM:
        return CONNECTED_ROUNDS
    # channels: measured without fine-tuning (bench/prune_oneshot.py); a fine-tune after the cut recovers
    # instead, so there one cut saves the seven extra refits. Random scores read nothing a refit changes (the
    # seed draws them), so every round would cut the same channels and the last refit gives the one cut's model
    drawn = record.statistic is not None and record.statistic.drawn
    return DEFAULT_ROUNDS if structured and oneshot_refit and not plan.finetune and not drawn else 1


def check_reconstruct(reconstruct: Any) -> None:
    if reconstruct is not None and not (isinstance(reconstruct, str) and reconstruct == LEAST_SQUARES):
        try:
            checks.check_bool("reconstruct", reconstruct)  # numpy's bools too, as before
        except KdnbError:
            raise KdnbError(f"reconstruct should be True, False or {LEAST_SQUARES!r}, got "
                            f"{checks.shown(reconstruct)}; pass reconstruct=True (the default with data), "
                            f"reconstruct={LEAST_SQUARES!r} (no fit of the output layer to the predictions) or False"
                            ) from None


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


def check_model_pattern(model: nn.Module, pattern: str | None, sparsity: float, structured: bool) -> None:
    """An N:M pattern fits the mode, the sparsity (1 - N/M) and some layer; the layers it leaves dense, named."""
    parsed = parse_pattern(pattern)
    if parsed is None:
        return
    if structured:
        raise KdnbError(f"pattern {pattern!r} masks single weights; use structured=False")
    n, m = parsed
    if abs(sparsity - (1 - n / m)) > 1e-9:
        raise KdnbError(f"pattern {pattern!r} keeps {n} of every {m} weights, sparsity {1 - n / m:g}; "
                        f"pass sparsity={1 - n / m:g}")
    misfits = pattern_misfits(model, pattern)
    if misfits:
        listed = ", ".join(f"{name!r} ({width})" for name, width in misfits.items())
        warn(f"pattern {pattern!r} leaves {len(misfits)} layer(s) dense, whose input channels are no "
             f"multiple of {m}: {listed}; every other layer is {pattern}", RuntimeWarning)


def check_prunable(model: nn.Module) -> None:
    """At least one Linear or Conv layer: the weights sparsity counts."""
    if not any(isinstance(m, PRUNABLE) and isinstance(getattr(m, "weight", None), torch.Tensor)
               for m in model.modules()):
        raise KdnbError(f"{type(model).__name__} has no prunable layers (pruning removes weights of nn.Linear and "
                        "nn.Conv1d/2d/3d layers); pass a model that has some, e.g. kdnb.models.mlp(64, [256], 10)")


def check_criterion(criterion: str, data: Iterable | None, model: nn.Module, structured: bool) -> criteria.Criterion:
    """The registry record of ``criterion``, after checking it fits the mode and the inputs."""
    record = criteria.REGISTRY.get(criterion) if isinstance(criterion, str) else None
    if record is None:
        raise KdnbError(f"unknown criterion {criterion!r}; {checks.suggest(str(criterion), criteria.names())} "
                        f"(known: {', '.join(criteria.names())})")
    if record.needs_data and data is None:
        raise KdnbError(f"criterion {criterion!r} needs data to score with: pass data=train_loader "
                        "(or use criterion='l1')")
    if record.statistic is not None and record.statistic.requires is not None:
        record.statistic.requires(model, criterion)
    if not (record.structured if structured else record.unstructured):
        if structured:
            raise KdnbError(f"criterion {criterion!r} scores single weights; use structured=False "
                            f"(or one of {', '.join(criteria.names(structured=True))})")
        raise KdnbError(f"criterion {criterion!r} scores whole channels; use structured=True "
                        f"(or another criterion for single weights: {', '.join(criteria.names(structured=False))})")
    return record


def check_inputs(model: nn.Module, data: Iterable | None, val: Iterable | None,
                 statistic: criteria.Statistic | None, trains: bool, structured: bool = False,
                 example: torch.Tensor | None = None, first: Any = None) -> None:
    """The model against what it will be given: ``data``'s and ``val``'s first batch through it, labels where
    a gradient or a training run needs them, trainable parameters for those, a tensor output where structured
    pruning compares outputs (an ``example`` the forward fails on is left to the tracer, which names the layer).
    ``first``: ``data``'s first batch, when drawn already."""
    needs_gradients = (statistic is not None and statistic.gradients) or trains
    why = "fine-tuning" if trains else f"a gradient-based criterion ({statistic.name if statistic else None})"
    if needs_gradients:
        checks.check_trainable([p for p in model.parameters() if p.requires_grad])
    compared = "structured pruning (it compares the model's outputs)" if structured else None
    if data is not None:
        checks.check_data_fits(model, data, "data", labels=why if needs_gradients else None, tensor=compared,
                               first=first)
    if example is not None and structured:
        with checks.eval_mode(model), torch.no_grad():
            try:
                out = call_example(model, to_device(example, checks.model_device(model)))
            except Exception:  # noqa: BLE001 - the tracer runs it again and names the failing layer
                out = torch.empty(0)
        checks.check_tensor_output(out, compared)
    if val is not None:
        checks.check_data_fits(model, val, "val", labels="the val accuracy")


@dataclass(frozen=True, kw_only=True)
class Scoring:
    """What `importance` scores with: the criterion, the mode, the statistics' inputs, slimming's training."""

    criterion: criteria.Criterion
    structured: bool = False
    example: torch.Tensor | None = None
    hessian_estimator: str = "fisher"
    slimming_epochs: int = 2
    slimming_l1: float = 1e-3
    calibration_samples: int = calibration.SAMPLES
    settings: Settings = Settings()


def parse_importance(model: Any, criterion: Any, data: Any, *, structured: Any, example: Any,
                     hessian_estimator: Any, slimming_epochs: Any, slimming_l1: Any, calibration_samples: Any,
                     settings: Settings) -> Scoring:
    """Every argument of `importance` (the explorer and `sensitivity` score with it), once, before the model is
    copied; the example that traces a structured model resolved (the first batch of ``data``)."""
    checks.check_model(model)
    check_prunable(model)
    if not isinstance(criterion, str):
        raise KdnbError(f"criterion should be a name, got {checks.shown(criterion)}; pass e.g. criterion='l1'")
    checks.check_bool("structured", structured)
    checks.check_choice("hessian_estimator", hessian_estimator, ESTIMATORS)
    checks.check_count("slimming_epochs", slimming_epochs, 0, example="2")
    checks.check_count("calibration_samples", calibration_samples, 1, example="2048")
    checks.check_fraction("slimming_l1", slimming_l1, 0.0, float("inf"), example="1e-3")
    if example is not None:
        checks.check_example(example, empty=True)
    if settings.seed is None:
        raise KdnbError("seed should be an integer (it seeds the random criterion and Hutchinson's probes), got "
                        "None; pass e.g. seed=0")
    settings = dataclasses.replace(settings, device=resolve_device(settings.device))
    record = criteria.REGISTRY.get(criterion)
    check_inputs(model, data, None, record.statistic if record else None, trains=False, structured=structured,
                 example=example)
    record = check_criterion(criterion, data, model, structured)
    if structured and example is None:
        if data is None:
            raise KdnbError("structured pruning needs an example input to trace the model: pass data= "
                            "(its first batch is used) or example=torch.randn(1, ...)")
        example = example_of(checks.first_batch(data))
    return Scoring(criterion=record, structured=structured, example=example, hessian_estimator=hessian_estimator,
                   slimming_epochs=slimming_epochs, slimming_l1=slimming_l1,
                   calibration_samples=calibration_samples, settings=settings)


def check_masks_grow(model: nn.Module, sparsity: float, structured: bool) -> None:
    """Masks only grow: an unstructured target below what the model's masks (torch.nn.utils.prune's, or kdnb's
    from an earlier prune) already hold at zero would revive weights the user pruned."""
    current = mask_sparsity(model)
    if not structured and sparsity < current - 1e-9:
        raise KdnbError(f"sparsity {sparsity:g} is below the model's current sparsity {current:.4f} (the weights "
                        f"its masks hold at zero, which pruning never revives); pass sparsity >= {current:.4f}")
