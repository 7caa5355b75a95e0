"""`kdnb.prune`: parse the keywords into records (`options`), then on a copy of the model, step by step as the
schedule says: score -> select -> rebuild (re-solve what is kept), fine-tune, and gather the result."""
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
from kdnb.engine.device import model_device, to_device
from kdnb.engine.distill import kd_objective
from kdnb.engine.evaluate import evaluate
from kdnb.engine.events import Callback, RunState
from kdnb.engine.history import History
from kdnb.engine.loop import Settings
from kdnb.engine.prune.cut.channels import remove_channels
from kdnb.engine.prune.graph import library
from kdnb.engine.prune.cut.masks import (apply_masks, clone, comparable, connected, current_masks, make_permanent,
                                         mask_sparsity)
from kdnb.engine.prune.graph.groups import (channel_groups, dependency_graph, keep_vectors, masks_from_keep,
                                            prunable_count, prunable_weights)
from kdnb.engine.prune import phases
from kdnb.engine.prune.options import CONNECTED, MARKER, PruneOptions, parse_prune
from kdnb.engine.prune.phases import Phases
from kdnb.engine.prune.rebuild.reconstruct import reconstruct as reconstruct_layers
from kdnb.engine.prune.result import PruneResult
from kdnb.engine.prune.schedule import decay, schedules
from kdnb.engine.prune.score import calibration, criteria
from kdnb.engine.prune.score.criteria import Criterion
from kdnb.engine.prune.schedule.slimming import slimming_phase
from kdnb.engine.prune.score.importance import compute_scores
from kdnb.engine.prune.score.scores import Scores
from kdnb.engine.prune.select import latency
from kdnb.engine.prune.select.channels import layer_cap, removed_channels, rounded
from kdnb.engine.prune.select.masks import masks_at
from kdnb.errors import KdnbError, warn


class _Sparsity(Callback):
    """Publishes the (fixed) sparsity of a fine-tuning run, so the history logs it per epoch."""

    def __init__(self, value: float):
        self.value = value

    def on_run_start(self, state: RunState) -> None:
        state.extra["sparsity"] = self.value


@dataclass
class Run:
    """What one `prune` call builds on the way; its options stay as parsed. ``record`` is the criterion scoring
    now: the option's, or for ``criterion="auto"`` its `Cut.fallback` once the first one could not score every
    layer; ``ranking`` is what ``scope="latency"`` chose at the first cut."""

    options: PruneOptions
    data: Iterable | None
    val: Iterable | None
    record: Criterion
    weights: dict[str, torch.Tensor]
    home: torch.device
    dense: nn.Module
    work: nn.Module
    phases: Phases  # "calibrate", "score", "rebuild", "delete", "time"
    started: float = field(default_factory=time.perf_counter)
    removed: dict[str, torch.Tensor] = field(default_factory=dict)
    runs: list[History] = field(default_factory=list)
    trajectory: list[dict[str, float | None]] = field(default_factory=list)
    interrupted: str | None = None  # where the stop button stopped a pruning round, if it did
    paths: list | None = None  # channel groups of the model, for `connected`
    ranking: str | None = None
    prior: dict[str, torch.Tensor] = field(default_factory=dict)  # the masks it came with: they only grow
    start_sparsity: float = 0.0  # the fraction of prunable weights those masks held at zero

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
    example: Any = None,
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
            what the refit could not recover. Default: `options.DEFAULT_ROUNDS` for a structured one-shot prune
            with reconstruction and no fine-tuning (but 1 for "random", whose rounds would all cut alike),
            `options.CONNECTED_ROUNDS` (16) for a one-shot "obs" prune with reconstruction at sparsity >= 0.98, else 1.
            With "obs", several rounds keep only weights on an input-output path
            (`kdnb.engine.prune.cut.masks.connected`); one cut is SparseGPT's sweep.
        finetune: fine-tuning epochs after pruning (per round for "iterative"; the whole run for "agp").
        schedule: "oneshot", "iterative" (``steps`` prune/fine-tune rounds), "agp" (gradual pruning over
            ``steps`` updates during fine-tuning, Zhu & Gupta 2017) or "auto" (the default): "agp" for single
            weights at sparsity >= 0.95 with fine-tuning, else "oneshot"; see `kdnb.engine.prune.schedule.schedules`.
        steps: rounds or updates (default 1 / 3 / 30 for oneshot / iterative / agp).
        distill: fine-tune with the unpruned model as teacher (Hinton KD, ``temperature``, ``alpha``).
        inplace: prune ``model`` itself instead of a copy.
        example: an input batch for structured tracing: a tensor, a tuple of inputs or a mapping of keyword
            inputs (as the model takes them); by default the first batch of ``data``.
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
    with checks.rng_preserved(data, val):  # the user's shuffling is as it was, even after an error
        options = parse_prune(
            model, sparsity, data, val, criterion=criterion, structured=structured, scope=scope,
            max_layer_sparsity=max_layer_sparsity, pattern=pattern, reconstruct=reconstruct, rounds=rounds,
            finetune=finetune, schedule=schedule, steps=steps, distill=distill, inplace=inplace, example=example,
            prune_again=prune_again, control=control, round_to=round_to, temperature=temperature, alpha=alpha,
            slimming_epochs=slimming_epochs, slimming_l1=slimming_l1, hessian_estimator=hessian_estimator,
            calibration_samples=calibration_samples, weight_decay=weight_decay,
            settings=Settings(optimizer=optimizer, lr=lr, scheduler=scheduler, amp=amp, grad_clip=grad_clip,
                              device=device, seed=seed, callbacks=callbacks))
        with checks.restored_on_error(model) if inplace else contextlib.nullcontext():  # a failure leaves no trace
            run = _prepare(model, options, data, val)
            _prune_and_finetune(run)  # each step: score -> select -> rebuild; then fine-tune
            return _result(run)


def _prepare(model: nn.Module, options: PruneOptions, data: Iterable | None, val: Iterable | None) -> Run:
    """The dense reference, the working copy on the run's device (a library's Linear stored transposed, GPT-2's
    Conv1D, as the nn.Linear it computes: `library.as_linears`), slimming's training phase."""
    weights, home, dense = prunable_weights(model), model_device(model), library.as_linears(clone(model))
    prior, start_sparsity = current_masks(model), mask_sparsity(model)
    work = make_permanent(model if options.inplace else clone(model)).to(options.settings.device)
    if prior:  # the user's masks (weights and biases) stay in force through every phase
        apply_masks(work, prior)
    work = library.as_linears(work)
    run = Run(options, data, val, criteria.REGISTRY[options.cut.criterion], weights, home, dense, work,
              Phases(work, options.settings.callbacks), prior=prior, start_sparsity=start_sparsity)
    statistic = run.record.statistic
    if statistic is not None and statistic.trains:
        slimming_phase(run.work, data, epochs=options.cut.slimming_epochs, l1=options.cut.slimming_l1,
                       settings=options.settings)
    return run


def _prune_round(run: Run, target: float, epochs_left: float) -> float:
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


def _prune_to(run: Run, target: float, resolve: bool) -> float:
    """Cut to ``target`` in ``rebuild.rounds`` steps (each re-solving the kept weights with ``resolve``): the kept
    fraction shrinks by the same factor in each, and each re-scores the network as the last one left it; returns
    the sparsity reached. Only the cut that reaches the final sparsity fits the output layer to the dense
    predictions (`Rebuild.predictions`): the ones before it are re-scored by group OBS, whose costs hold for
    least-squares consumers."""
    rounds, final = run.options.rebuild.rounds, run.options.cut.sparsity
    kept = 1.0 - _masked_sparsity(run.work, run.weights, run.total)
    reached = 1.0 - kept
    for i in range(1, rounds + 1):
        step = 1.0 - kept * ((1.0 - target) / kept) ** (i / rounds) if i < rounds else target
        last = i == rounds and target == final and run.options.rebuild.predictions
        reached = _cut(run, step, resolve, predictions=last)
    return reached


def _resolves(run: Run, epochs_left: float) -> bool:
    """Whether a pruning step followed by ``epochs_left`` epochs of fine-tuning re-solves the kept weights: as
    asked by ``reconstruct=True`` (or "least_squares"); by default a one-shot cut does, and a gradual step when
    fewer than `schedules.RESOLVE_BELOW` epochs follow it (`schedules.resolves`)."""
    rebuild = run.options.rebuild
    return rebuild.reconstruct and (rebuild.every_step or schedules.resolves(epochs_left))


def _cut(run: Run, target: float, resolve: bool, predictions: bool = False) -> float:
    """Score the current model, select what goes at ``target`` and mask it, then (with ``resolve``) rebuild the
    rest, the output layer fitted to the dense predictions with ``predictions``; returns the sparsity reached."""
    cut, rebuild = run.options.cut, run.options.rebuild
    plain = make_permanent(clone(run.work))
    # the re-solve reproduces the unpruned model, or the fine-tuned one once training has moved it
    trained = bool(run.runs) or run.options.schedule.kind == "agp"
    reference = (plain if trained else run.dense) if resolve else None
    example = to_device(run.options.example, model_device(plain)) if run.options.example is not None else None
    scores = _every_layer_scored(run, plain, _scored(run, plain, example), example)  # score
    pruned = current_masks(run.work)
    if cut.structured:  # select
        run.removed.clear()
        run.removed.update(_removal(run, plain, scores, target, pruned, example))
        masks = masks_from_keep(keep_vectors(scores.groups, run.removed, scores.shapes), scores.shapes)
    else:
        masks = masks_at(scores, target, cut.scope, pruned, pattern=cut.pattern,
                         gradual=run.options.schedule.kind != "oneshot")
        if run.record.name in CONNECTED and reference is not None and rebuild.rounds > 1 and cut.pattern is None \
                and example is not None:
            masks = connected(masks, comparable(scores, pruned), _groups(run, plain, example))
    apply_masks(run.work, _grown(masks, run.prior))
    if reference is not None:  # rebuild; OBS's sweep re-chooses a single cut's masks, re-scored rounds keep theirs
        reselect = run.record.reselect and not cut.structured and rebuild.rounds == 1
        reconstruct_layers(run.work, reference, run.data, rebuild.calibration_samples, reselect=reselect,
                           pattern=cut.nm, predictions=predictions, progress=run.phases.tracker("rebuild"))
        if run.prior:  # a re-chosen mask keeps the user's masks too
            apply_masks(run.work, _grown(current_masks(run.work), run.prior))
        distributed.broadcast_from_main(run.work.state_dict().values())  # rank 0's re-solved weights everywhere
    reached = _masked_sparsity(run.work, run.weights, run.total)
    run.trajectory.append({"target": target, "sparsity": reached, "val_acc": run.accuracy(run.work),
                           "resolved": reference is not None})
    return reached


def _grown(masks: dict[str, torch.Tensor], prior: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``masks`` with every entry ``prior`` pruned pruned too (masks only grow)."""
    return {name: mask & prior[name].to(mask.device) if name in prior else mask for name, mask in masks.items()}


def _scored(run: Run, plain: nn.Module, example: torch.Tensor | None) -> Scores:
    """`Scores` of ``plain`` by the run's criterion, with the run's data, seed, estimator and calibration samples."""
    cut = run.options.cut
    return compute_scores(plain, run.record, run.data, cut.structured, example, run.options.settings.seed,
                          cut.hessian_estimator, run.options.rebuild.calibration_samples, run.phases)


def _every_layer_scored(run: Run, plain: nn.Module, scores: Scores, example: torch.Tensor | None) -> Scores:
    """The layer-wise criteria score only the layers whose inputs they read: group OBS needs a re-solvable
    consumer (a Linear, a Conv1d/2d, or grouped) for every channel group, OBS and Wanda a Linear or ungrouped
    Conv1d/2d for every weight. Where they cannot score them all, "auto" takes, for every layer, the criterion
    that can (`Cut.fallback`: channels L1, weights LAMP); a criterion asked for by name keeps its scores, and the
    first unstructured cut says which layers stay dense."""
    structured, fallback = run.options.cut.structured, run.options.cut.fallback
    unscored = [group.root for group in scores.groups if group.root not in scores.channels] if structured \
        else [name for name in run.weights if name not in scores.weights]
    if not unscored:
        return scores
    if fallback is not None:
        run.record = criteria.REGISTRY[fallback]
        return _scored(run, plain, example)
    if not structured and not run.trajectory:
        warn(f"criterion {run.record.name!r} scores only Linear and ungrouped Conv1d/2d layers, so {len(unscored)} "
             f"layer(s) stay dense: {', '.join(unscored[:4])}{', ...' if len(unscored) > 4 else ''}; "
             "criterion='lamp' prunes every layer", RuntimeWarning)
    return scores


def _removal(run: Run, plain: nn.Module, scores: Scores, target: float, pruned: dict[str, torch.Tensor],
             example: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The channels a structured cut removes. ``scope="latency"`` picks its ranking once, at the first cut, by
    timing both candidate cuts at the final sparsity on the example (`latency.choose`), and keeps it."""
    cut = run.options.cut
    if cut.scope != "latency":
        removed = removed_channels(scores, target, cut.scope, pruned, cut.max_layer_sparsity)
    else:
        if run.ranking is None:
            run.ranking = latency.choose(plain, scores, cut.sparsity, example, cut.max_layer_sparsity,
                                         progress=run.phases.tracker("time"))
        removed = latency.removal(scores, target, pruned, run.ranking, cut.max_layer_sparsity)
    return rounded(removed, scores, pruned, cut.round_to) if cut.round_to else removed


def _groups(run: Run, model: nn.Module, example: torch.Tensor) -> list:
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


def _finetune(run: Run, epochs: int, title: str, subscribers: list[object], net: nn.Module | None = None) -> History:
    """One fine-tuning run of the one loop, with the training settings given to `prune`."""
    settings, teacher = run.options.settings, run.options.teacher
    objective = None
    if teacher is not None:
        objective = kd_objective(clone(run.dense).eval(), temperature=teacher.temperature, alpha=teacher.alpha)
    net = run.work if net is None else net
    optimizer = settings.optimizer
    if optimizer is None and run.options.schedule.weight_decay:
        optimizer = decay.adamw(net, run.options.example, settings.lr, run.options.schedule.weight_decay)
    return loop.fit(net, run.data, run.val, epochs=epochs, optimizer=optimizer,
                    lr=settings.lr, objective=objective, device=settings.device, amp=settings.amp, seed=settings.seed,
                    callbacks=[*subscribers, *settings.callbacks], scheduler=settings.scheduler,
                    grad_clip=settings.grad_clip,
                    title=f"{title} ({'structured' if run.options.cut.structured else 'unstructured'})")


def _prune_and_finetune(run: Run) -> None:
    """The schedule: one step, rounds of prune-then-fine-tune, or gradual pruning during fine-tuning."""
    plan, sparsity = run.options.schedule, run.options.cut.sparsity
    if plan.kind == "agp":
        run.runs.append(_finetune(run, plan.finetune, "finetune",
                                  [schedules.AGP(sparsity, plan.steps, lambda s, k, n: _prune_round(
                                      run, s, schedules.epochs_left("agp", plan.finetune, n, k)))]))
        return
    targets = [sparsity] if plan.kind == "oneshot" else schedules.iterative_targets(sparsity, plan.steps)
    for i, target in enumerate(targets):
        try:
            reached = _prune_round(run, target, schedules.epochs_left(plan.kind, plan.finetune, len(targets), i + 1))
        except KeyboardInterrupt:
            if not run.trajectory:  # nothing pruned yet: nothing to return
                raise KeyboardInterrupt("prune was interrupted before its first pruning step finished; nothing "
                                        "was changed") from None
            run.interrupted = (f"interrupted in pruning round {i + 1} of {len(targets)}; the model is as after "
                               f"round {i}")
            break
        if plan.finetune:
            title = "finetune" if len(targets) == 1 else f"finetune {i + 1}/{len(targets)}"
            run.runs.append(_finetune(run, plan.finetune, title, [_Sparsity(reached)]))
            run.trajectory[-1]["finetuned_acc"] = run.accuracy(run.work)
            if run.runs[-1].status != "completed":
                break


def _result(run: Run) -> PruneResult:
    """Delete the removed channels, run the control, mark the model, and gather the result."""
    work, cut, plan = run.work, run.options.cut, run.options.schedule
    example = run.options.example
    deleted = cut.structured
    if cut.structured:
        masked = checks.ModelState(work)  # the pruned (and fine-tuned) model, its channels masked to zero
        make_permanent(work)
        try:
            remove_channels(work, run.removed, to_device(example, model_device(work)),
                            progress=run.phases.tracker("delete"))
        except KeyboardInterrupt:  # half-deleted layers are no model: it goes back to computing the same, masked
            masked.restore()
            deleted = False
            run.interrupted = ("interrupted while deleting the removed channels: the model keeps them masked to "
                               "zero (it computes the same; make_permanent folds the masks), not deleted")
    reached = _structured_sparsity(work, run.total) if deleted else _masked_sparsity(work, run.weights, run.total)
    control_model = None
    if plan.control and plan.finetune:
        control_model = clone(run.dense).to(run.options.settings.device)
        _finetune(run, plan.finetune * (1 if plan.kind != "iterative" else plan.steps), "control", [],
                  net=control_model)
        control_model.to(run.home)
    work.to(run.home)
    library.restore_modules(work)
    library.restore_modules(run.dense)
    if cut.structured and (problem := library.reload_problem(work)) is not None:
        warn(f"the pruned {type(work).__name__} saves with save_pretrained, but its library's from_pretrained "
             f"cannot rebuild it ({problem}); reload it with kdnb.engine.prune.from_pretrained(its class, "
             "directory)", RuntimeWarning)
    setattr(work, MARKER, [*getattr(work, MARKER, []), {"sparsity": reached, "criterion": run.record.name,
                                                        "structured": cut.structured}])
    return PruneResult(model=work, dense=run.dense, masks={} if deleted else current_masks(work),
                       criterion=run.record.name, structured=cut.structured, scope=cut.scope, schedule=plan.kind,
                       steps=plan.steps, target=cut.sparsity, sparsity=reached, finetune=plan.finetune,
                       distill=run.options.teacher is not None, history=_merge(run.runs, run.interrupted),
                       trajectory=run.trajectory, dense_accuracy=run.accuracy(run.dense), val=run.val,
                       example=to_device(example, torch.device("cpu")) if example is not None else None, control=control_model,
                       channels=_channels(run.dense, work) if cut.structured else {},
                       reconstructed=run.options.rebuild.reconstruct, pattern=cut.pattern, ranking=run.ranking,
                       max_layer_sparsity=_layer_cap(run), start_sparsity=run.start_sparsity,
                       measure_with=measure.compare,
                       cost=phases.cost(run.started, run.dense,
                                        run.data is not None and run.options.rebuild.reconstruct))


def _layer_cap(run: Run) -> float | None:
    """The per-layer cap the structured cut ran under (scope="latency": that of the ranking it chose)."""
    if not run.options.cut.structured:
        return None
    scope = latency.SCOPE[run.ranking] if run.ranking is not None else run.options.cut.scope
    return layer_cap(scope, run.options.cut.max_layer_sparsity)


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
