"""`prune`: check -> prepare -> score and mask (then reconstruct) -> fine-tune -> finish, on a copy of the model,
following a schedule. Each step is one function below; `prune` only calls them in order."""
from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdnb.engine import checks, distributed, loop, measure
from kdnb.engine.device import model_device, resolve_device
from kdnb.engine.distill import kd_objective
from kdnb.errors import KdnbError, warn
from kdnb.engine.evaluate import evaluate
from kdnb.engine.events import Callback, RunState
from kdnb.engine.history import History
from kdnb.engine.objective import split_batch
from kdnb.engine.prune import arguments
from kdnb.engine.prune.cut.channels import remove_channels
from kdnb.engine.prune.cut.masks import (apply_masks, clone, comparable, connected, current_masks, make_permanent,
                                         mask_sparsity)
from kdnb.engine.prune.graph.groups import (channel_groups, check_structured_support, dependency_graph, keep_vectors,
                                            masks_from_keep, prunable_count, prunable_weights)
from kdnb.engine.prune import phases
from kdnb.engine.prune.phases import Phases
from kdnb.engine.prune.rebuild.reconstruct import reconstruct as reconstruct_layers
from kdnb.engine.prune.result import PruneResult
from kdnb.engine.prune.schedule import budget, decay, schedules
from kdnb.engine.prune.score import calibration, criteria, estimate
from kdnb.engine.prune.score.criteria import Criterion
from kdnb.engine.prune.score.importance import check_criterion, compute_scores
from kdnb.engine.prune.score.scores import Scores
from kdnb.engine.prune.select import latency
from kdnb.engine.prune.select.channels import layer_cap, removed_channels, rounded
from kdnb.engine.prune.select.masks import check_sparsity, masks_at
from kdnb.engine.prune.select.patterns import parse_pattern, pattern_misfits

MARKER = "kdnb_pruned"  # attribute a pruned model carries: the list of prunings it went through
# criterion="auto": the best of bench/prune_oneshot.py (reconstructing, with data) for weights and for channels;
# "l1" for channels without data, or for a model whose channels group OBS cannot all score (see `_every_layer_scored`)
DEFAULT_CRITERION = {False: "lamp", True: "thinet"}
GRADUAL_CRITERION = "hessian"  # the best of bench/prune_sparsity.py's gradual schedules (masked, fine-tuned)
# an N:M pattern re-solved on data: SparseGPT's N:M sweep, ahead of L1's choice on both nets of
# bench/prune_oneshot.py --part pattern
PATTERN_CRITERION = "obs"
DEFAULT_ROUNDS = 8  # re-scored cuts of a structured one-shot prune with reconstruction (bench/prune_oneshot.py)
# single-weight criteria whose re-scored rounds keep only weights on an input-output path (`connected`; a single
# cut is SparseGPT's sweep), and their default rounds in a one-shot prune with reconstruction from CONNECTED_FROM
# sparsity on, where the rounds win by far, with and without fine-tuning, at many times a cut's cost (below it a
# single cut does as well: bench/prune_sparsity.py, and bench/prune_oneshot.py on notebook 02's teacher)
CONNECTED, CONNECTED_ROUNDS, CONNECTED_FROM = ("obs",), 16, 0.98


class _Sparsity(Callback):
    """Publishes the (fixed) sparsity of a fine-tuning run, so the history logs it per epoch."""

    def __init__(self, value: float):
        self.value = value

    def on_run_start(self, state: RunState) -> None:
        state.extra["sparsity"] = self.value


@dataclass
class _Run:
    """Everything one `prune` call decided at its entry, and what it builds on the way."""

    options: dict[str, Any]
    record: Criterion
    reconstruct: bool
    rounds: int
    steps: int
    example: torch.Tensor | None
    weights: dict[str, torch.Tensor]
    home: torch.device
    device: torch.device
    dense: nn.Module = None  # type: ignore[assignment]
    work: nn.Module = None  # type: ignore[assignment]
    removed: dict[str, torch.Tensor] = field(default_factory=dict)
    runs: list[History] = field(default_factory=list)
    trajectory: list[dict[str, float | None]] = field(default_factory=list)
    interrupted: str | None = None  # where the stop button stopped a pruning round, if it did
    paths: list | None = None  # channel groups of the model, for `connected`
    prior: dict[str, torch.Tensor] = field(default_factory=dict)  # the masks it came with: they only grow
    start_sparsity: float = 0.0  # the fraction of prunable weights those masks held at zero

    def __getattr__(self, name: str) -> Any:  # the options read as attributes: run.sparsity, run.data...
        try:
            return self.__dict__["options"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def total(self) -> int:
        return sum(w.numel() for w in self.weights.values())

    def accuracy(self, net: nn.Module) -> float | None:
        return evaluate(net, self.val)["accuracy"] if self.val is not None else None


def prune(
    model: nn.Module,
    sparsity: float,
    *,
    criterion: str = "auto",
    structured: bool = False,
    scope: str = "global",
    max_layer_sparsity: float | None = None,
    round_to: int | None = None,
    pattern: str | None = None,
    data: Iterable | None = None,
    val: Iterable | None = None,
    reconstruct: bool | str | None = None,
    rounds: int | None = None,
    finetune: int = 0,
    schedule: str = "auto",
    steps: int | None = None,
    distill: bool = False,
    inplace: bool = False,
    example: torch.Tensor | None = None,
    prune_again: bool = False,
    control: bool = False,
    temperature: float = 4.0,
    alpha: float = 0.5,
    slimming_epochs: int = 2,
    slimming_l1: float = 1e-3,
    hessian_estimator: str = "fisher",
    calibration_samples: int = calibration.SAMPLES,
    optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
    lr: float = 1e-3,
    weight_decay: float | None = None,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    amp: bool = False,
    grad_clip: float | None = None,
    device: str = "auto",
    seed: int = 0,
    callbacks: Iterable[object] = (),
) -> PruneResult:
    """Prune ``model`` to ``sparsity`` by ``criterion``, re-solve what is kept, optionally fine-tune, and
    return a `PruneResult`.

    ``sparsity`` is the fraction of the *prunable weights* (the weights of every Linear and Conv layer;
    biases and BatchNorm parameters are not counted) that are removed, in both modes:

    - ``structured=False``: that many single weights are zeroed by masks (``torch.nn.utils.prune``), which
      stay fixed through fine-tuning; ``make_permanent(result.model)`` folds them for fast inference.
      ``pattern="2:4"``: N of every M consecutive input weights of each row are kept (``sparsity`` must be
      1 - N/M); in a conv, N of every M consecutive input channels at each kernel position, as sparse tensor
      cores read a conv (NVIDIA's ASP). A layer whose input channels are no multiple of M (an RGB stem's 3) stays
      dense, with a warning naming it, so ``result.sparsity`` is then below 1 - N/M. Fast only on sparse tensor
      cores (``torch.sparse.to_sparse_semi_structured``, CUDA).
    - ``structured=True``: whole neurons/channels are deleted (Torch-Pruning's DependencyGraph finds the
      coupled layers: BatchNorm, next layers' inputs, residual branches, depthwise convs). Each channel
      takes a known number of weights with it, so channels are removed in ascending score (``scope=
      "global"``; l1 scores divided by their layer's mean first) or as the same fraction of every layer
      (``"local"``), the number of channels found by bisection, until the prunable-weight sparsity
      reaches ``sparsity`` (about ``1 - sqrt(1 - sparsity)`` of the channels for a chain of equal layers).
      The classifier's outputs are kept; the sparsity reached is ``result.sparsity``.

    With ``data`` (and ``reconstruct`` not False), after each pruning step every layer's kept weights and
    bias are re-solved, layer by layer in forward order, to reproduce the unpruned layer's outputs on the
    first ``calibration_samples`` samples of ``data`` (`kdnb.engine.prune.rebuild.reconstruct`: Optimal Brain
    Surgeon's update, layer-wise; structured: the least-squares refit of the consumers of removed channels);
    after the last cut (before fine-tuning shorter than `schedules.RESOLVE_BELOW` epochs) the output layer goes
    on to the unpruned model's predicted distribution (`kdnb.engine.prune.rebuild.output_refit`).

    Args:
        model: a trained ``nn.Module``; left bit-identical unless ``inplace=True``.
        sparsity: fraction of prunable weights to remove, in [0, 1).
        criterion: a name of `kdnb.engine.prune.score.criteria.REGISTRY` ("l1", "lamp", "taylor", "taylor_group",
            "hessian", "obs", "wanda", "thinet", "slimming", "random"); "auto" (the default) is the best the
            benches found: for single weights "lamp" in one shot (bench/prune_oneshot.py; "obs", SparseGPT's
            sweep, for an N:M pattern with data) and "hessian" in a gradual schedule (bench/prune_sparsity.py); for
            channels "thinet" (group OBS) with data, "l1"
            without, or where a channel's only readers are layers the refit cannot re-solve, such as a ConvTranspose
            or a Conv3d (both reconstructed with data; a grouped conv is re-solved one conv-group at a time).
        structured: delete channels (True) or zero single weights (False).
        scope: "global" (rank across layers: the accuracy default; a one-shot cut that leaves a layer under a
            tenth of the density kept overall warns, as raw l1 does from 95 % on the notebook-02 teacher, where it
            ends below random even re-solved), "local" (the same sparsity in every layer; Wanda: per row) or,
            structured, "latency" (the speed setting: the faster on the example batch of two cuts, by score per
            latency cost -- MACs plus memory traffic -- and "global", see `kdnb.engine.prune.select.latency`; timed, so
            the choice may differ between machines) or "macs" (rank by score per MAC a channel's removal saves;
            before any fine-tuning both cost accuracy, see bench/prune_zoo.py).
        max_layer_sparsity: structured: the largest fraction of any layer's channels (heads, neurons) a cut
            removes, as Torch-Pruning's ``max_pruning_ratio``; once a layer reaches it the ranking moves on to
            the others (if none can give more, the sparsity reached stays below ``sparsity``, with a warning).
            Default None: 0.5 (`select.channels.MAX_LAYER_SPARSITY`) for the cost rankings ("macs" and "latency"'s
            cost-ranked cut), which alone would cut a costly layer to one channel (tutorial 03: the ResNet's
            stem, many points of accuracy lost after fine-tuning, bench/prune_zoo.py --floor); no
            cap but the one channel each layer keeps for "global" and "local".
        round_to: structured: keep a multiple of this many channels in each layer (Torch-Pruning's ``round_to``),
            restoring the best-scored of those the cut removed, so the sparsity reached may fall a little short.
            Runtimes that compute in blocks of channels need it: ONNX Runtime's CPU convolutions run 8 or 16
            channels at a time and fall back to a slower path otherwise, where a structurally pruned MobileNetV2
            runs slower than the dense one (bench/export.py). None: 1.
        pattern: "N:M" semi-structured sparsity (unstructured only).
        data: training ``DataLoader``: statistics for the data criteria, calibration for reconstruction,
            slimming's L1 phase, fine-tuning, and (first batch) the example input for structured tracing.
        val: validation loader for accuracies in the history and the summary.
        reconstruct: re-solve the kept weights on ``data`` (default, when ``data`` is given: every one-shot cut;
            in a gradual schedule the steps followed by fewer than ``schedules.RESOLVE_BELOW`` (10) epochs of
            fine-tuning, the earlier ones only mask: the training after them recovers better alone, see
            `kdnb.engine.prune.schedule.schedules`; the result's trajectory marks each step "resolved"). True also
            fits the output layer to the unpruned model's predictions (a classifier's logits) after the last cut;
            ``"least_squares"`` re-solves every layer, the output layer too, by least squares only.
        rounds: cut each pruning step in this many re-scored steps, geometric in the kept weights, with no
            training between: each round scores the network the last re-solve left, so the criterion sees
            what the refit could not recover. Default: `DEFAULT_ROUNDS` for a structured one-shot prune
            with reconstruction and no fine-tuning (but 1 for "random", whose rounds would all cut alike),
            `CONNECTED_ROUNDS` (16) for a one-shot "obs" prune with reconstruction at sparsity >= 0.98, else 1.
            With "obs", several rounds keep only weights on an input-output path
            (`kdnb.engine.prune.cut.masks.connected`); one cut is SparseGPT's sweep.
        finetune: fine-tuning epochs after pruning (per round for "iterative"; the whole run for "agp").
        schedule: "oneshot", "iterative" (``steps`` prune/fine-tune rounds), "agp" (gradual pruning over
            ``steps`` updates during fine-tuning, Zhu & Gupta 2017) or "auto" (the default): "agp" for single
            weights at sparsity >= 0.95 with fine-tuning, else "oneshot"; see `kdnb.engine.prune.schedule.schedules`.
        steps: rounds or updates (default 1 / 3 / 30 for oneshot / iterative / agp).
        distill: fine-tune with the unpruned model as teacher (Hinton KD, ``temperature``, ``alpha``).
        inplace: prune ``model`` itself instead of a copy.
        example: an input batch for structured tracing; by default the first batch of ``data``.
        prune_again: allow pruning a model that is already a `prune` result (never by accident).
        control: also fine-tune an unpruned copy for the same epochs, the control of Blalock et al. 2020.
        slimming_epochs, slimming_l1: the L1-on-BatchNorm-scales training phase of network slimming.
        hessian_estimator: the hessian criterion's diagonal: "fisher" (empirical Fisher) or "hutchinson".
        calibration_samples: samples of ``data`` that the data criteria's statistics (gradients, layer inputs) and
            the reconstruction read: the first ones, at each re-scoring (a gradual schedule re-scores at every
            update, so this bounds its cost on a large training set).
        optimizer, lr, scheduler, amp, grad_clip, device, seed, callbacks: the training settings of the
            fine-tuning (and slimming) runs, as in `kdnb.train` (``optimizer``: None for Adam(lr), or a factory
            ``params -> optimizer``, since the run trains a copy). ``seed`` also seeds the random criterion
            and Hutchinson's probes; the result comes back on the model's original device.
        weight_decay: the default optimizer's decoupled weight decay (AdamW) on the weights of the Linear and Conv
            layers that no normalisation reads (`kdnb.engine.prune.schedule.decay`); None (the default):
            `decay.WEIGHT_DECAY` (1.0) in an agp schedule of `decay.FROM_EPOCHS` (10) or more epochs of a model
            without normalisation layers (`decay.default`), 0 (Adam) otherwise. With ``optimizer`` given, set the
            decay in it instead.

    Returns:
        PruneResult: ``.model``, ``.masks``, ``.sparsity``, ``.history``, ``.summary()``, ``.plot()``.
    """
    with calibration.loaders_untouched(data, val):  # the user's shuffling is as it was, even after an error
        run = _check(model, dict(locals()))
        with checks.restored_on_error(model) if inplace else contextlib.nullcontext():  # a failure leaves no trace
            _prepare(run, model)
            _prune_and_finetune(run)
            return _finish(run)


def _check(model: nn.Module, options: dict[str, Any]) -> _Run:
    """Every argument, once, before anything changes; a one-line `KdnbError` names the problem and the fix."""
    if isinstance(model, PruneResult):
        raise KdnbError("got a PruneResult; pass its .model (with prune_again=True) to prune it further")
    checks.check_model(model)
    arguments.check_prunable(model)
    arguments.check_prune_options(options)
    options["sparsity"] = check_sparsity(options["sparsity"])
    structured, data = options["structured"], options["data"]
    steps = _check_schedule(options)
    options["auto"] = options["criterion"] == "auto"
    criterion = _default_criterion(options) if options["auto"] else options["criterion"]
    options["criterion"] = criterion
    record = check_criterion(criterion, data, model, structured, options["hessian_estimator"])
    for loader, what in ((data, "data"), (options["val"], "val")):
        if loader is not None:
            checks.check_loader(loader, what)
    if getattr(model, MARKER, None) and not options["prune_again"]:
        last = getattr(model, MARKER)[-1]
        raise KdnbError(f"this model is already pruned (sparsity {last['sparsity']:.4f}, {last['criterion']}); "
                        "pass prune_again=True to prune it further")
    _check_masks_grow(model, options["sparsity"], structured)
    trains = bool(options["finetune"] or options["control"])
    arguments.check_inputs(model, data, options["val"], record.statistic, trains, structured, options["example"])
    weights = prunable_weights(model)
    _check_pattern(model, options)
    arguments.check_round_to(options["round_to"], structured)
    reconstruct = _check_reconstruct(options, steps)
    rounds = _check_rounds(options, reconstruct)
    example = options["example"]
    if structured:
        check_structured_support(model)
        if example is None and data is None:
            raise KdnbError("structured pruning needs an example input to trace the model: pass data= "
                            "(its first batch is used) or example=torch.randn(1, ...)")
    if example is None and data is not None:
        example = split_batch(checks.first_batch(data))[0]
    return _Run(options, record, reconstruct, rounds, steps, example, weights, model_device(model),
                resolve_device(options["device"]))


def _check_masks_grow(model: nn.Module, sparsity: float, structured: bool) -> None:
    """Masks only grow: an unstructured target below what the model's masks (torch.nn.utils.prune's, or kdnb's
    from an earlier prune) already hold at zero would revive weights the user pruned."""
    current = mask_sparsity(model)
    if not structured and sparsity < current - 1e-9:
        raise KdnbError(f"sparsity {sparsity:g} is below the model's current sparsity {current:.4f} (the weights "
                        f"its masks hold at zero, which pruning never revives); pass sparsity >= {current:.4f}")


def _check_schedule(options: dict[str, Any]) -> int:
    """Fine-tuning and schedule arguments; resolves ``schedule="auto"`` (`schedules.resolve`) in ``options``;
    returns the pruning steps (``steps``, or the schedule's default)."""
    finetune, steps = options["finetune"], options["steps"]
    if isinstance(finetune, bool) or not isinstance(finetune, int) or finetune < 0:
        raise KdnbError(f"finetune should be a number of epochs (an integer >= 0), got {finetune!r}")
    schedule = options["schedule"] = schedules.resolve(options["schedule"], options["sparsity"], finetune,
                                                       bool(options["structured"]), options["pattern"])
    steps = schedules.DEFAULT_STEPS[schedule] if steps is None else steps
    checks.check_positive("steps", steps, integer=True)
    checks.check_positive("lr", options["lr"])
    if schedule == "oneshot" and steps != 1:
        raise KdnbError(f"schedule 'oneshot' prunes in one step, got steps={steps}; use schedule='iterative' or 'agp'")
    if schedule == "agp" and finetune < 1:
        raise KdnbError("schedule 'agp' prunes gradually during fine-tuning: set finetune >= 1 (epochs)")
    if (finetune or options["control"]) and options["data"] is None:
        raise KdnbError("fine-tuning needs data: pass data=train_loader, or finetune=0")
    if options["distill"] and not finetune:
        raise KdnbError("distill=True fine-tunes with the unpruned model as teacher: set finetune >= 1")
    if isinstance(options["optimizer"], torch.optim.Optimizer):
        raise KdnbError("prune fine-tunes a copy of the model, so an optimizer built on the model's parameters "
                        "would train nothing: pass a factory, e.g. optimizer=lambda p: torch.optim.SGD(p, lr=0.1)")
    options["weight_decay"] = _check_weight_decay(options)
    return steps


def _check_weight_decay(options: dict[str, Any]) -> float:
    """The default optimizer's decoupled decay (its range checked by `arguments.check_prune_options`):
    ``weight_decay``, or for None `decay.default`."""
    weight_decay = options["weight_decay"]
    if weight_decay is None:
        by_default = decay.default(options["model"], options["schedule"], options["finetune"])
        return by_default if options["optimizer"] is None else 0.0
    if options["optimizer"] is not None:
        raise KdnbError("weight_decay sets the default optimizer's (AdamW) decay, but optimizer= is given: set the "
                        "decay in your optimizer instead, e.g. "
                        "optimizer=lambda p: torch.optim.AdamW(p, weight_decay=1.0)")
    return float(weight_decay)


def _check_pattern(model: nn.Module, options: dict[str, Any]) -> None:
    parsed = parse_pattern(options["pattern"])
    if parsed is None:
        return
    if options["structured"]:
        raise KdnbError(f"pattern {options['pattern']!r} masks single weights; use structured=False")
    n, m = parsed
    if abs(options["sparsity"] - (1 - n / m)) > 1e-9:
        raise KdnbError(f"pattern {options['pattern']!r} keeps {n} of every {m} weights, sparsity {1 - n / m:g}; "
                        f"pass sparsity={1 - n / m:g}")
    misfits = pattern_misfits(model, options["pattern"])
    if misfits:
        listed = ", ".join(f"{name!r} ({width})" for name, width in misfits.items())
        warn(f"pattern {options['pattern']!r} leaves {len(misfits)} layer(s) dense, whose input channels are no "
             f"multiple of {m}: {listed}; every other layer is {options['pattern']}", RuntimeWarning)


def _default_criterion(options: dict[str, Any]) -> str:
    """What ``criterion="auto"`` stands for: channels "thinet" with data, else "l1"; single weights "lamp" in
    one shot ("obs" for an N:M pattern re-solved on data), "hessian" (raw OBD scores ranked globally) in a
    gradual schedule (bench/prune_oneshot.py, bench/prune_sparsity.py)."""
    if options["structured"]:
        return DEFAULT_CRITERION[True] if options["data"] is not None else "l1"
    if options["schedule"] != "oneshot":
        return GRADUAL_CRITERION
    if options["pattern"] is not None and options["data"] is not None and options["reconstruct"] is not False:
        return PATTERN_CRITERION
    return DEFAULT_CRITERION[False]


def _check_reconstruct(options: dict[str, Any], steps: int) -> bool:
    reconstruct, data = options["reconstruct"], options["data"]
    if reconstruct is None:  # a gradual step re-solves when little training follows it (`schedules.resolves`)
        schedule = options["schedule"]
        last = schedules.epochs_left(schedule, options["finetune"], steps, steps)
        return data is not None and (schedule == "oneshot" or schedules.resolves(last))
    if reconstruct and data is None:
        raise KdnbError(f"reconstruct={reconstruct!r} re-solves the kept weights on calibration samples: pass "
                        "data=train_loader (or reconstruct=False)")
    return bool(reconstruct)


def _check_rounds(options: dict[str, Any], reconstruct: bool) -> int:
    rounds = options["rounds"]
    if rounds is None:
        oneshot_refit = reconstruct and options["schedule"] == "oneshot"
        # single weights: connected OBS rounds from CONNECTED_FROM on (measured with and without fine-tuning)
        if (not options["structured"] and oneshot_refit and options["criterion"] in CONNECTED
                and options["pattern"] is None and options["sparsity"] >= CONNECTED_FROM):
            return CONNECTED_ROUNDS
        # channels: measured without fine-tuning (bench/prune_oneshot.py); a fine-tune after the cut recovers
        # instead, so there one cut saves the seven extra refits. Random scores read nothing a refit changes (the
        # seed draws them), so every round would cut the same channels and the last refit gives the one cut's model
        drawn = criteria.REGISTRY[options["criterion"]].statistic == "generator"
        return DEFAULT_ROUNDS if options["structured"] and oneshot_refit and not options["finetune"] and not drawn \
            else 1
    checks.check_positive("rounds", rounds, integer=True)
    return rounds


def _prepare(run: _Run, model: nn.Module) -> None:
    """The dense reference, the working copy on the run's device, slimming's training phase."""
    run.dense = clone(model)
    run.prior, run.start_sparsity = current_masks(model), mask_sparsity(model)
    run.work = make_permanent(model if run.inplace else clone(model)).to(run.device)
    if run.prior:  # the user's masks (weights and biases) stay in force through every phase
        apply_masks(run.work, run.prior)
    run.options["phases"] = Phases(run.work, run.callbacks)  # "calibrate", "score", "rebuild", "delete", "time"
    run.options["started"] = time.perf_counter()
    if run.options["rounds"] is None and run.rounds > 1 and run.structured:  # as many as their passes afford:
        # eight on the tutorials' networks, one on a ResNet at 224x224 (`budget.ROUNDS_FLOPS`)
        run.rounds = budget.affordable_rounds(run.dense, run.example, run.data, run.calibration_samples, run.rounds)
    if run.record.statistic == "batchnorm_scale":
        estimate.slimming_phase(run.work, run.data, epochs=run.slimming_epochs, l1=run.slimming_l1, lr=run.lr,
                                device=str(run.device), seed=run.seed, callbacks=list(run.callbacks))


def _prune_round(run: _Run, target: float, epochs_left: float) -> float:
    """`_prune_to` as one step, followed by ``epochs_left`` epochs of fine-tuning, that happens whole or not at
    all: an exception (the stop button too) in its scoring, masking, re-solving or evaluation puts the working
    model and the removed channels back as they were before it, then goes on."""
    removed = dict(run.removed)
    try:
        with checks.restored_on_error(run.work):
            return _prune_to(run, target, _resolves(run, epochs_left))
    except BaseException:
        run.removed.clear()
        run.removed.update(removed)
        raise


def _prune_to(run: _Run, target: float, resolve: bool) -> float:
    """Cut to ``target`` in ``run.rounds`` steps (each re-solving the kept weights with ``resolve``): the kept
    fraction shrinks by the same factor in each, and each re-scores the network as the last one left it; returns
    the sparsity reached."""
    kept = 1.0 - _masked_sparsity(run.work, run.weights, run.total)
    reached = 1.0 - kept
    for i in range(1, run.rounds + 1):
        reached = _cut(run, 1.0 - kept * ((1.0 - target) / kept) ** (i / run.rounds) if i < run.rounds else target,
                       resolve, predictions=i == run.rounds and target == run.sparsity and _fits_predictions(run))
    return reached


def _fits_predictions(run: _Run) -> bool:
    """Whether the cut that reaches ``sparsity`` fits the output layer to the dense predictions (`output_refit`):
    unless asked for least squares, and only before a short fine-tuning (under `schedules.RESOLVE_BELOW` epochs).

    Only that last cut: the ones before it are re-scored by group OBS, whose costs hold for least-squares
    consumers (fitting in every round lost accuracy on notebook 02's teacher, bench/prune_oneshot.py). A short
    fine-tuning keeps the fit's gain (the README's prune), a long one recovers less from the sharper output layer
    (bench/prune_sparsity.py, the one-shot OBS start); the crossover between 2 and 20 epochs is not measured."""
    return run.options["reconstruct"] != arguments.LEAST_SQUARES and run.finetune < schedules.RESOLVE_BELOW


def _resolves(run: _Run, epochs_left: float) -> bool:
    """Whether a pruning step followed by ``epochs_left`` epochs of fine-tuning re-solves the kept weights: as
    asked by ``reconstruct=True`` (or "least_squares"); by default a one-shot cut does, and a gradual step when
    fewer than `schedules.RESOLVE_BELOW` epochs follow it (`schedules.resolves`)."""
    if not run.reconstruct:
        return False
    if run.options["reconstruct"] is not None or run.schedule == "oneshot":
        return True
    return schedules.resolves(epochs_left)


def _cut(run: _Run, target: float, resolve: bool, predictions: bool = False) -> float:
    """Re-score the current model, mask it at ``target`` (then, with ``resolve``, re-solve the rest, the output
    layer fitted to the dense predictions with ``predictions``: `_fits_predictions`); returns the sparsity
    reached."""
    plain = make_permanent(clone(run.work))
    # the re-solve reproduces the unpruned model, or the fine-tuned one once training has moved it
    trained = bool(run.runs) or run.schedule == "agp"
    reference = (plain if trained else run.dense) if resolve else None
    example = run.example.to(model_device(plain)) if run.example is not None else None
    scores = _every_layer_scored(run, plain, _scored(run, plain, example), example)
    pruned = current_masks(run.work)
    if run.structured:
        run.removed.clear()
        run.removed.update(_removal(run, plain, scores, target, pruned, example))
        masks = masks_from_keep(keep_vectors(scores.groups, run.removed, scores.shapes), scores.shapes)
    else:
        masks = masks_at(scores, target, run.scope, pruned, pattern=run.pattern, gradual=run.schedule != "oneshot")
        if run.record.name in CONNECTED and reference is not None and run.rounds > 1 and run.pattern is None \
                and example is not None:
            masks = connected(masks, comparable(scores, pruned), _groups(run, plain, example))
    apply_masks(run.work, _grown(masks, run.prior))
    if reference is not None:  # OBS's sweep re-chooses a single cut's masks; re-scored rounds keep theirs
        reselect = run.record.reselect and not run.structured and run.rounds == 1
        reconstruct_layers(run.work, reference, run.data, run.calibration_samples, reselect=reselect,
                           pattern=parse_pattern(run.pattern), predictions=predictions,
                           progress=run.phases.tracker("rebuild"))
        apply_masks(run.work, _grown(current_masks(run.work), run.prior))  # a re-chosen mask keeps them too
        distributed.broadcast_from_main(run.work.state_dict().values())  # rank 0's re-solved weights everywhere
    reached = _masked_sparsity(run.work, run.weights, run.total)
    run.trajectory.append({"target": target, "sparsity": reached, "val_acc": run.accuracy(run.work),
                           "resolved": reference is not None})
    return reached


def _grown(masks: dict[str, torch.Tensor], prior: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``masks`` with every entry ``prior`` pruned pruned too (masks only grow)."""
    return {name: mask & prior[name].to(mask.device) if name in prior else mask for name, mask in masks.items()}


def _scored(run: _Run, plain: nn.Module, example: torch.Tensor | None) -> Scores:
    """`Scores` of ``plain`` by the run's criterion, with the run's data, seed, estimator and calibration samples."""
    return compute_scores(plain, run.record, run.data, run.structured, example, run.seed, run.hessian_estimator,
                          run.calibration_samples, run.phases)


def _every_layer_scored(run: _Run, plain: nn.Module, scores: Scores, example: torch.Tensor | None) -> Scores:
    """The layer-wise criteria score only the layers whose inputs they read: group OBS needs a re-solvable
    consumer (a Linear, a Conv1d/2d, or grouped) for every channel group, OBS and Wanda a Linear or ungrouped
    Conv1d/2d for every weight. Where they cannot score them all, "auto" takes, for every layer, the criterion
    that can (channels L1, weights LAMP); a criterion asked for by name keeps its scores, and the first
    unstructured cut says which layers stay dense."""
    unscored = [group.root for group in scores.groups if group.root not in scores.channels] if run.structured \
        else [name for name in run.weights if name not in scores.weights]
    if not unscored:
        return scores
    if run.auto:
        fallback = "l1" if run.structured else DEFAULT_CRITERION[False]
        run.options["criterion"], run.record = fallback, criteria.REGISTRY[fallback]
        return _scored(run, plain, example)
    if not run.structured and not run.trajectory:
        warn(f"criterion {run.criterion!r} scores only Linear and ungrouped Conv1d/2d layers, so {len(unscored)} "
             f"layer(s) stay dense: {', '.join(unscored[:4])}{', ...' if len(unscored) > 4 else ''}; "
             "criterion='lamp' prunes every layer", RuntimeWarning)
    return scores


def _removal(run: _Run, plain: nn.Module, scores: Scores, target: float, pruned: dict[str, torch.Tensor],
             example: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The channels a structured cut removes. ``scope="latency"`` picks its ranking once, at the first cut, by
    timing both candidate cuts at the final sparsity on the example (`latency.choose`), and keeps it."""
    if run.scope != "latency":
        removed = removed_channels(scores, target, run.scope, pruned, run.max_layer_sparsity)
    else:
        if "ranking" not in run.options:
            run.options["ranking"] = latency.choose(plain, scores, run.sparsity, example, run.max_layer_sparsity,
                                                    progress=run.phases.tracker("time"))
        removed = latency.removal(scores, target, pruned, run.options["ranking"], run.max_layer_sparsity)
    return rounded(removed, scores, pruned, run.round_to) if run.round_to else removed


def _groups(run: _Run, model: nn.Module, example: torch.Tensor) -> list:
    """The model's channel groups (traced once per `prune` call) for the connectivity of `connected`; none (the
    masks stay as scored) for a model Torch-Pruning cannot trace, such as a recurrent one."""
    if run.paths is None:
        with warnings.catch_warnings():  # its notes on channels it leaves whole concern structured pruning
            warnings.simplefilter("ignore")
            try:
                run.paths = channel_groups(model, dependency_graph(model, example))
            except KdnbError:
                run.paths = []
    return run.paths


def _finetune(run: _Run, epochs: int, title: str, subscribers: list[object], net: nn.Module | None = None) -> History:
    """One fine-tuning run of the one loop, with the training settings given to `prune`."""
    objective = None
    if run.distill:
        objective = kd_objective(clone(run.dense).eval(), temperature=run.temperature, alpha=run.alpha)
    net = run.work if net is None else net
    optimizer = run.optimizer
    if optimizer is None and run.weight_decay:
        optimizer = decay.adamw(net, run.example, run.lr, run.weight_decay)
    return loop.fit(net, run.data, run.val, epochs=epochs, optimizer=optimizer,
                    lr=run.lr, objective=objective, device=run.device, amp=run.amp, seed=run.seed,
                    callbacks=[*subscribers, *run.callbacks], scheduler=run.scheduler, grad_clip=run.grad_clip,
                    title=f"{title} ({'structured' if run.structured else 'unstructured'})")  # names the chart


def _prune_and_finetune(run: _Run) -> None:
    """The schedule: one step, rounds of prune-then-fine-tune, or gradual pruning during fine-tuning."""
    if run.schedule == "agp":
        run.runs.append(_finetune(run, run.finetune, "finetune",
                                  [schedules.AGP(run.sparsity, run.steps, lambda s, k, n: _prune_round(
                                      run, s, schedules.epochs_left("agp", run.finetune, n, k)))]))
        return
    targets = [run.sparsity] if run.schedule == "oneshot" else schedules.iterative_targets(run.sparsity, run.steps)
    for i, target in enumerate(targets):
        try:
            reached = _prune_round(run, target, schedules.epochs_left(run.schedule, run.finetune, len(targets), i + 1))
        except KeyboardInterrupt:
            if not run.trajectory:  # nothing pruned yet: nothing to return
                raise KeyboardInterrupt("prune was interrupted before its first pruning step finished; nothing "
                                        "was changed") from None
            run.interrupted = (f"interrupted in pruning round {i + 1} of {len(targets)}; the model is as after "
                               f"round {i}")
            break
        if run.finetune:
            title = "finetune" if len(targets) == 1 else f"finetune {i + 1}/{len(targets)}"
            run.runs.append(_finetune(run, run.finetune, title, [_Sparsity(reached)]))
            run.trajectory[-1]["finetuned_acc"] = run.accuracy(run.work)
            if run.runs[-1].status != "completed":
                break


def _finish(run: _Run) -> PruneResult:
    """Delete the removed channels, run the control, mark the model, and gather the result."""
    work = run.work
    deleted = run.structured
    if run.structured:
        masked = checks.ModelState(work)  # the pruned (and fine-tuned) model, its channels masked to zero
        make_permanent(work)
        try:
            remove_channels(work, run.removed, run.example.to(model_device(work)),  # type: ignore[union-attr]
                            progress=run.phases.tracker("delete"))
        except KeyboardInterrupt:  # half-deleted layers are no model: it goes back to computing the same, masked
            masked.restore()
            deleted = False
            run.interrupted = ("interrupted while deleting the removed channels: the model keeps them masked to "
                               "zero (it computes the same; make_permanent folds the masks), not deleted")
    reached = _structured_sparsity(work, run.total) if deleted else _masked_sparsity(work, run.weights, run.total)
    control_model = None
    if run.control and run.finetune:
        control_model = clone(run.dense).to(run.device)
        _finetune(run, run.finetune * (1 if run.schedule != "iterative" else run.steps), "control", [],
                  net=control_model)
        control_model.to(run.home)
    work.to(run.home)
    setattr(work, MARKER, [*getattr(work, MARKER, []), {"sparsity": reached, "criterion": run.criterion,
                                                        "structured": run.structured}])
    return PruneResult(model=work, dense=run.dense, masks={} if deleted else current_masks(work),
                       criterion=run.criterion, structured=run.structured, scope=run.scope, schedule=run.schedule,
                       steps=run.steps, target=run.sparsity, sparsity=reached, finetune=run.finetune,
                       distill=run.distill, history=_merge(run.runs, run.interrupted), trajectory=run.trajectory,
                       dense_accuracy=run.accuracy(run.dense), val=run.val,
                       example=run.example.cpu() if run.example is not None else None, control=control_model,
                       channels=_channels(run.dense, work) if run.structured else {},
                       reconstructed=run.reconstruct, pattern=run.pattern,
                       ranking=run.options.get("ranking"), max_layer_sparsity=_layer_cap(run),
                       start_sparsity=run.start_sparsity, measure_with=measure.compare,
                       cost=phases.cost(run.started, run.dense, run.data is not None and run.reconstruct))


def _layer_cap(run: _Run) -> float | None:
    """The per-layer cap the structured cut ran under (scope="latency": that of the ranking it chose)."""
    if not run.structured:
        return None
    scope = latency.SCOPE[run.options["ranking"]] if "ranking" in run.options else run.scope
    return layer_cap(scope, run.max_layer_sparsity)


def _effective(module: nn.Module, attr: str = "weight") -> torch.Tensor:
    orig, mask = getattr(module, f"{attr}_orig", None), getattr(module, f"{attr}_mask", None)
    return (orig * mask if mask is not None else getattr(module, attr)).detach()


def _masked_sparsity(model: nn.Module, weights: dict[str, torch.Tensor], total: int) -> float:
    zeros = 0
    for name in weights:
        module_name, _, attr = name.rpartition(".")  # "weight", or an attention's "in_proj_weight"
        zeros += int((_effective(model.get_submodule(module_name), attr) == 0).sum())
    return zeros / total


def _structured_sparsity(model: nn.Module, total: int) -> float:
    return 1.0 - prunable_count(model) / total


def _channels(before: nn.Module, after: nn.Module) -> dict[str, tuple[int, int]]:
    """(kept, original) output channels of every Linear/Conv layer that lost some."""
    result = {}
    for name, module in before.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            original = module.weight.shape[0]
            kept = after.get_submodule(name).weight.shape[0]
            if kept != original:
                result[name] = (kept, original)
    return result


def _merge(runs: list[History], interrupted: str | None = None) -> History:
    """One history of all fine-tuning runs, epochs numbered on from run to run (``interrupted``: where the stop
    button stopped a pruning round, which then is the status)."""
    merged = History()
    offset = 0
    for run in runs:
        for name, values in run.steps.items():
            merged.steps.setdefault(name, []).extend(values)
        for index in range(run.num_epochs):
            row = {name: values[index] for name, values in run.epochs.items() if index < len(values)}
            row["epoch"] = offset + index + 1
            merged.log_epoch(row)
        offset += run.num_epochs
        merged.status, merged.message = run.status, run.message
    if not runs:
        merged.status = "completed"
    if interrupted is not None:
        merged.status, merged.message = "interrupted", interrupted
    return merged
