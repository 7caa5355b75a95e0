"""Sensitivity analysis (Li et al. 2017, "Pruning Filters for Efficient ConvNets", Fig. 2): prune one layer
at a time, at several sparsities, without fine-tuning, and see how much accuracy each layer can lose."""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from kdnb.engine import checks
from kdnb.errors import KdnbError
from kdnb.engine.evaluate import evaluate
from kdnb.engine.batches import example_of
from kdnb.engine.loop import Settings
from kdnb.engine.prune import options
from kdnb.engine.prune.graph.groups import keep_vectors, masks_from_keep
from kdnb.engine.prune.result import SensitivityResult
from kdnb.engine.prune.score import calibration
from kdnb.engine.prune.score.importance import score
from kdnb.engine.prune.score.scores import Scores
from kdnb.engine.prune.select.masks import masks_at


def _layer_masks(scores: Scores, layer: str, sparsity: float) -> dict[str, torch.Tensor]:
    """Masks pruning only ``layer`` (a weight, or a channel group's root when structured) to ``sparsity``."""
    if not scores.structured:
        alone = Scores(scores.criterion, False, scores.model, {layer: scores.weights[layer]}, [layer], scores.shapes)
        return masks_at(alone, sparsity, scope="local")
    values = scores.channels[layer]
    gone = torch.zeros(len(values), dtype=torch.bool)
    gone[torch.argsort(values, stable=True)[:min(round(sparsity * len(values)), len(values) - 1)]] = True
    return masks_from_keep(keep_vectors(scores.groups, {layer: gone}, scores.shapes), scores.shapes)


def sensitivity(
    model: nn.Module,
    val: Iterable,
    *,
    sparsities: Sequence[float] = (0.25, 0.5, 0.75, 0.9, 0.95),
    criterion: str = "l1",
    data: Iterable | None = None,
    structured: bool = False,
    layers: Sequence[str] | None = None,
    example: torch.Tensor | None = None,
    optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
    lr: float = 1e-3,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    amp: bool = False,
    grad_clip: float | None = None,
    device: str = "auto",
    seed: int = 0,
    callbacks: Iterable[object] = (),
) -> SensitivityResult:
    """Val accuracy of ``model`` with each layer alone pruned to each of ``sparsities`` (no fine-tuning).

    Scores are computed once (`importance`); each point then masks one layer of a copy and evaluates.
    Unstructured: the layer's lowest-scored weights; structured: its lowest-scored channels (with
    everything coupled to them), ``sparsity`` being the fraction of the layer's channels.

    Args:
        model: the trained model; not changed.
        val: labelled loader to evaluate on.
        sparsities: the sparsities to try, each in [0, 1).
        criterion: as in `prune`; taylor, hessian and slimming need ``data``.
        example: an input batch to trace the model (structured); by default the first batch of data or val.
        layers: names to analyse (weight names like "1.weight", or, structured, layer names like "1");
            default all.
        optimizer, lr, scheduler, amp, grad_clip, device, seed, callbacks: the training settings, as in
            `kdnb.train`: slimming's L1 phase trains with them; ``seed`` also seeds the random criterion.
    """
    sparsities = checks.check_sparsities(sparsities)
    layers = checks.check_layer_names(layers)
    checks.check_model(model)
    checks.check_data_fits(model, val, "val", labels="sensitivity (it measures val accuracy)")
    settings = Settings(optimizer=optimizer, lr=lr, scheduler=scheduler, amp=amp, grad_clip=grad_clip, device=device,
                        seed=seed, callbacks=callbacks)
    with checks.rng_preserved(data, val):  # scoring and evaluating draw batches; the shuffling stays
        if structured and example is None:
            example = example_of(checks.first_batch(data if data is not None else val))
        scoring = options.parse_importance(model, criterion, data, structured=structured, example=example,
                                           hessian_estimator="fisher", slimming_epochs=2, slimming_l1=1e-3,
                                           calibration_samples=calibration.SAMPLES, settings=settings)
        try:
            scores = score(model, data, scoring)
        except KeyboardInterrupt:
            raise KeyboardInterrupt("sensitivity was interrupted while scoring, before any layer was pruned; "
                                    "nothing to return, and the model is as given") from None
        known = list(scores.channels if structured else scores.weights)
        layers = known if layers is None else layers
        unknown = [name for name in layers if name not in known]
        if unknown:
            raise KdnbError(f"unknown layer {unknown[0]!r} for sensitivity; known: {', '.join(known)}; pass some "
                            "of these as layers=")
        accuracy, dense = _accuracies(scores, layers, sparsities, val)
    sizes = {layer: (len(scores.channels[layer]) if structured else scores.shapes[layer].numel()) for layer in accuracy}
    stopped = None if len(accuracy) == len(layers) else \
        f"interrupted by the stop button: {len(accuracy)} of {len(layers)} layers measured"
    return SensitivityResult(criterion, structured, sparsities, accuracy, sizes, dense, stopped)


def _accuracies(scores: Scores, layers: list[str], sparsities: list[float], val: Iterable
                ) -> tuple[dict[str, list[float]], float]:
    """Val accuracy with each layer alone masked at each sparsity, and with none masked. The stop button ends it
    after the last whole layer: the layers measured so far (on a copy: the model is never touched)."""
    net = copy.deepcopy(scores.model).cpu().eval()
    params = dict(net.named_parameters(remove_duplicate=False))  # a tied weight under each of its names
    dense = evaluate(net, val)["accuracy"]
    accuracy: dict[str, list[float]] = {}
    for layer in layers:
        try:
            accuracy[layer] = [_masked_accuracy(scores, net, params, layer, s, val) for s in sparsities]
        except KeyboardInterrupt:
            break
    return accuracy, dense


def _masked_accuracy(scores: Scores, net: nn.Module, params: dict[str, torch.Tensor], layer: str, sparsity: float,
                     val: Iterable) -> float:
    """Val accuracy of ``net`` with ``layer`` alone masked at ``sparsity``; its weights are put back after."""
    masks = _layer_masks(scores, layer, sparsity)
    saved = {name: params[name].detach().clone() for name in masks}
    try:
        with torch.no_grad():
            for name, mask in masks.items():
                params[name].mul_(mask)
        return evaluate(net, val)["accuracy"]
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
