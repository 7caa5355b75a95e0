"""`importance` computes a criterion's scores of a model once (the costly part, with data); `masks_at`
(`kdnb.engine.prune.select.masks`) then masks at any sparsity cheaply. The criteria, and the statistic each reads,
come from the registry (`kdnb.engine.prune.score.criteria.REGISTRY`).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from kdnb.engine import checks, distributed
from kdnb.engine.batches import example_rows, first_example_rows
from kdnb.engine.device import model_device, to_device
from kdnb.engine.loop import Settings
from kdnb.engine.prune import options
from kdnb.engine.prune.cut.masks import clone, make_permanent
from kdnb.engine.prune.graph.groups import ChannelGroup, channel_groups, channel_scores, dependency_graph, \
    prunable_weights
from kdnb.engine.prune.phases import Phases, silent
from kdnb.engine.prune.score import calibration, criteria, estimate
from kdnb.engine.prune.schedule.slimming import slimming_phase
from kdnb.engine.prune.score.scores import Scores


def importance(model: nn.Module, criterion: str = "l1", data: Iterable | None = None, *, structured: bool = False,
               example: torch.Tensor | None = None, seed: int = 0, hessian_estimator: str = "fisher",
               slimming_epochs: int = 2, slimming_l1: float = 1e-3, lr: float = 1e-3, device: str = "auto",
               callbacks: Iterable[object] = (), calibration_samples: int = calibration.SAMPLES) -> Scores:
    """Score every weight (or, ``structured=True``, every channel) of ``model`` once; then
    ``masks_at(scores, s)`` gives the masks at any sparsity ``s`` cheaply.

    Works on a copy: ``model`` is untouched. For "slimming" the copy is first trained
    ``slimming_epochs`` epochs with the L1 penalty on BatchNorm scales; ``scores.model`` is that copy.

    Args:
        model: the network to score.
        criterion: a name of `kdnb.engine.prune.score.criteria.REGISTRY` ("l1", "lamp", "taylor", "obs", ...).
        data: labelled batches: the statistics (gradients, layer inputs) read their first
            ``calibration_samples`` samples; slimming trains on all of them.
        structured: score channels (coupled groups, via Torch-Pruning's DependencyGraph) instead of weights.
        example: an input batch to trace the model (structured); by default the first batch of ``data``.
        seed: seeds the random criterion and Hutchinson's probes.
        hessian_estimator: the hessian criterion's diagonal: "fisher" (empirical Fisher, per-sample gradients
            squared) or "hutchinson" (Hutchinson's estimator, one Rademacher probe per batch).
        calibration_samples: how many samples of ``data`` the statistics read (default `calibration.SAMPLES`):
            what bounds the cost of scoring on a large training set.
        lr, device, callbacks: slimming's L1 phase trains with them.
    """
    with checks.rng_preserved(data):  # iterating a shuffled loader does not move the user's shuffling
        scoring = options.parse_importance(
            model, criterion, data, structured=structured, example=example, hessian_estimator=hessian_estimator,
            slimming_epochs=slimming_epochs, slimming_l1=slimming_l1, calibration_samples=calibration_samples,
            settings=Settings(lr=lr, device=device, seed=seed, callbacks=callbacks))
        try:
            return score(model, data, scoring)
        except KeyboardInterrupt:  # scores are whole or nothing; the model was never touched (a copy is scored)
            raise KeyboardInterrupt(f"importance was interrupted while scoring ({criterion}); there are no scores "
                                    "yet, and the model is as given") from None


def score(model: nn.Module, data: Iterable | None, scoring: options.Scoring) -> Scores:
    """`Scores` of a copy of ``model`` by ``scoring`` (checked: `options.parse_importance`), slimming's L1 phase
    first when the criterion's statistic trains."""
    work = make_permanent(clone(model))
    record = scoring.criterion
    if record.statistic is not None and record.statistic.trains and scoring.slimming_epochs:
        slimming_phase(work, data, epochs=scoring.slimming_epochs, l1=scoring.slimming_l1,  # type: ignore[arg-type]
                       settings=scoring.settings)
        work.to("cpu")
    return compute_scores(work, record, data, scoring.structured, scoring.example, scoring.settings.seed,
                          scoring.hessian_estimator, scoring.calibration_samples)


def compute_scores(model: nn.Module, record: criteria.Criterion, data: Iterable | None, structured: bool,
                   example: torch.Tensor | None, seed: int | None, hessian_estimator: str, samples: int,
                   phases: Phases | None = None) -> Scores:
    """`Scores` of ``model`` as it is (no training), its statistic read on the first ``samples`` of ``data``;
    ``phases`` hears "calibrate" (layer by layer where the statistics are layer-wise) and "score"."""
    phases = phases or silent()
    groups = channel_groups(model, dependency_graph(model, to_device(_tracing(example), model_device(model)))) \
        if structured else []  # type: ignore[union-attr]
    groups = estimate.untied_groups(model, groups)  # a shared weight's channels stay whole: the tie holds
    context = criteria.Context(model, data, structured, seed, hessian_estimator, groups, samples,  # type: ignore
                               phases.tracker("calibrate"))
    phases.report("calibrate", 0, 1)
    arguments = record.statistic.estimate(context) if record.statistic is not None else \
        {n: (w,) for n, w in context.scored().items()}  # the weight alone
    phases.report("calibrate", 1, 1)
    values = {key: record.formula(*args) for key, args in phases.each("score", list(arguments.items()))}
    distributed.broadcast_from_main(values.values())  # several processes: rank 0's scores, so the same masks
    prunable = list(prunable_weights(model))
    shapes = {n: p.shape for n, p in model.named_parameters(remove_duplicate=False)}  # tied: every name
    result = Scores(record.name, structured, model, {} if record.channel and structured else
                    {n: s for n, s in values.items() if n in prunable}, prunable, shapes, groups)
    for group in groups:
        channel = values.get(group.root) if record.channel else _channel_scores(group, values, record.reads)
        if channel is not None:
            result.channels[group.root] = channel.detach().double().cpu()
    return result


def _tracing(example: Any) -> Any:
    """Two samples of ``example`` (batch first; a tensor, a tuple of inputs or a mapping of keyword inputs), enough
    to trace the model's graph: a ResNet-50 traced on a batch of 32 images at 224x224 costs a quarter of a pass of
    128 calibration images, for the same graph."""
    return first_example_rows(example, 2) if example_rows(example) > 2 else example


def _channel_scores(group: ChannelGroup, values: dict[str, torch.Tensor], reads: bool) -> torch.Tensor | None:
    """Each channel's element scores summed over the group's slices; ``reads``: over the slices that read the
    channel only (the next layers' input columns; removing a channel is exactly zeroing them), the whole group
    where the criterion scores none of those."""
    readers = replace(group, slices=[s for s in group.slices if s.consumer]) if reads else group
    channel = channel_scores(readers, values)
    return channel if channel is not None or not reads else channel_scores(group, values)
