"""Score once, mask at any sparsity: `importance` computes a criterion's scores (the costly part, with
data), `masks_at` turns them into masks for a given sparsity (cheap: a sort), so a slider can move;
`masked_model` is a copy of the scored model with those masks applied.

Sparsity always means the fraction of *prunable weights* (those of every Linear and Conv layer; biases
and BatchNorm parameters are not counted) that are zero or gone, in both modes.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from kdnb.engine.errors import KdnbError, suggest
from kdnb.engine.prune import criteria, estimate
from kdnb.engine.prune.groups import (ChannelGroup, channel_groups, channel_scores, dependency_graph, keep_vectors,
                                      masks_from_keep, prunable_weights, remaining_weights)

SCOPES = ("global", "local")
_BATCHNORM = nn.modules.batchnorm._BatchNorm


@dataclass
class Scores:
    """A criterion's scores of one model, ready for `masks_at`.

    Attributes:
        criterion: the criterion's name.
        structured: channel scores (True) or weight scores (False).
        model: the model the scores belong to (for "slimming", the copy trained with the L1 penalty):
            apply the masks to this one.
        weights: element score of every prunable weight, by parameter name (structured: those the
            criterion scores).
        prunable: names of the prunable weights (those sparsity counts).
        groups: structured only: the coupled channel groups, and ``channels[root]`` each channel's score.
        shapes: shape of every parameter, by name.
    """

    criterion: str
    structured: bool
    model: nn.Module
    weights: dict[str, torch.Tensor]
    prunable: list[str]
    shapes: dict[str, torch.Size]
    groups: list[ChannelGroup] = field(default_factory=list)
    channels: dict[str, torch.Tensor] = field(default_factory=dict)

    def __repr__(self) -> str:
        what = f"{len(self.channels)} channel groups" if self.structured else f"{len(self.weights)} weight tensors"
        return f"Scores(criterion={self.criterion!r}, structured={self.structured}, {what})"


ESTIMATORS = ("fisher", "hutchinson")


def check_criterion(criterion: str, data: Iterable | None, model: nn.Module, structured: bool,
                    hessian_estimator: str = "fisher") -> None:
    if criterion not in criteria.CRITERIA:
        raise KdnbError(f"unknown criterion {criterion!r}; {suggest(str(criterion), criteria.CRITERIA)} "
                        f"(known: {', '.join(criteria.CRITERIA)})")
    if hessian_estimator not in ESTIMATORS:
        raise KdnbError(f"unknown hessian_estimator {hessian_estimator!r}; "
                        f"{suggest(str(hessian_estimator), ESTIMATORS)}")
    if criterion in criteria.NEEDS_DATA and data is None:
        raise KdnbError(f"criterion {criterion!r} needs data to score with: pass data=train_loader "
                        "(or use criterion='l1')")
    if criterion == "slimming":
        if not any(isinstance(m, _BATCHNORM) and m.affine for m in model.modules()):
            raise KdnbError("criterion 'slimming' prunes by BatchNorm scales but the model has no BatchNorm "
                            "layer; use criterion='l1', 'taylor' or 'hessian'")
        if not structured:
            raise KdnbError("criterion 'slimming' scores whole channels by their BatchNorm scale; "
                            "use structured=True (or another criterion for single weights)")


def saliency(model: nn.Module, criterion: str, data: Iterable | None = None, *, structured: bool = False,
             seed: int = 0, hessian_estimator: str = "fisher") -> dict[str, torch.Tensor]:
    """Element scores of ``model``'s parameters by ``criterion`` (weights only, unless structured: then every
    parameter the criterion scores, BatchNorm included). The model's weights are not changed."""
    params = dict(model.named_parameters())
    weights = prunable_weights(model)
    if criterion == "l1":
        return {n: criteria.l1(w.detach()) for n, w in weights.items()}
    if criterion == "random":
        generator = torch.Generator().manual_seed(seed)
        return {n: criteria.random(w, generator) for n, w in weights.items()}
    if criterion == "slimming":
        return {f"{n}.weight" if n else "weight": criteria.slimming(m.weight.detach())
                for n, m in model.named_modules() if isinstance(m, _BATCHNORM) and m.affine}
    if criterion == "taylor":
        stats = estimate.squared_gradients(model, data)  # type: ignore[arg-type]
        formula = criteria.taylor
    else:
        stats = (estimate.fisher_diagonal(model, data) if hessian_estimator == "fisher"  # type: ignore[arg-type]
                 else estimate.hutchinson_diagonal(model, data, seed=seed))  # type: ignore[arg-type]
        formula = criteria.hessian
    names = params if structured else weights
    return {n: formula(params[n].detach(), stats[n]) for n in names if n in stats}


def score(model: nn.Module, criterion: str, data: Iterable | None = None, *, structured: bool = False,
          example: torch.Tensor | None = None, seed: int = 0, hessian_estimator: str = "fisher") -> Scores:
    """`Scores` of ``model`` as it is (no training), on the model itself."""
    weights = saliency(model, criterion, data, structured=structured, seed=seed, hessian_estimator=hessian_estimator)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    prunable = list(prunable_weights(model))
    result = Scores(criterion, structured, model, {n: s for n, s in weights.items() if n in prunable}, prunable,
                    shapes)
    if structured:
        if example is None:
            raise KdnbError("structured pruning needs an example input to trace the model: pass data= "
                            "(its first batch is used) or example=torch.randn(1, ...)")
        result.groups = channel_groups(model, dependency_graph(model, example))
        generator = torch.Generator().manual_seed(seed)
        for group in result.groups:
            channel = (torch.rand(group.size, generator=generator, dtype=torch.float64) if criterion == "random"
                       else channel_scores(group, weights))
            if channel is not None:
                result.channels[group.root] = channel
    return result


def importance(model: nn.Module, criterion: str = "l1", data: Iterable | None = None, *, structured: bool = False,
               example: torch.Tensor | None = None, seed: int = 0, hessian_estimator: str = "fisher",
               slimming_epochs: int = 2, slimming_l1: float = 1e-3, lr: float = 1e-3, device: str = "cpu",
               callbacks: Iterable[object] = ()) -> Scores:
    """Score every weight (or, ``structured=True``, every channel) of ``model`` once; then
    ``masks_at(scores, s)`` gives the masks at any sparsity ``s`` cheaply.

    Works on a copy: ``model`` is untouched. For "slimming" the copy is first trained
    ``slimming_epochs`` epochs with the L1 penalty on BatchNorm scales; ``scores.model`` is that copy.

    Args:
        model: the network to score.
        criterion: "l1", "taylor", "hessian", "slimming" or "random" (see `kdnb.engine.prune.criteria`).
        data: labelled batches: taylor and hessian accumulate over all of them; slimming trains on them.
        structured: score channels (coupled groups, via Torch-Pruning's DependencyGraph) instead of weights.
        example: an input batch to trace the model (structured); by default the first batch of ``data``.
        seed: seeds the random criterion and Hutchinson's probes.
        hessian_estimator: the hessian criterion's diagonal: "fisher" (empirical Fisher, per-sample gradients
            squared) or "hutchinson" (Hutchinson's estimator, one Rademacher probe per batch).
    """
    from kdnb.engine.checks import first_batch
    from kdnb.engine.objective import split_batch
    from kdnb.engine.prune.unstructured import clone, make_permanent

    check_criterion(criterion, data, model, structured, hessian_estimator)
    work = make_permanent(clone(model))
    if criterion == "slimming":
        estimate.slimming_phase(work, data, epochs=slimming_epochs, l1=slimming_l1, lr=lr,  # type: ignore[arg-type]
                                device=device, seed=seed, callbacks=callbacks)
        work.to("cpu")
    if structured and example is None and data is not None:
        example = split_batch(first_batch(data))[0]
    return score(work, criterion, data, structured=structured, example=example, seed=seed,
                 hessian_estimator=hessian_estimator)


def check_sparsity(sparsity: object) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise KdnbError(f"sparsity should be a number in [0, 1) -- the fraction of prunable weights removed -- "
                        f"got {sparsity!r}")
    return float(sparsity)


def masks_at(scores: Scores, sparsity: float, scope: str = "global",
             pruned: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Boolean masks (True = kept) that remove the lowest-scored weights or channels, at ``sparsity``.

    Unstructured: the ``round(sparsity * n)`` lowest-scored weights, among all layers ("global", as
    ``torch.nn.utils.prune.global_unstructured``) or in each layer ("local"). Structured: whole channels
    in ascending score ("global"; l1 scores are divided by their layer's mean first, as magnitudes of
    different layers are not comparable) or the same fraction of each layer ("local"), adding channels
    until the prunable-weight sparsity reaches ``sparsity`` (it may overshoot by less than one channel).
    Each layer keeps at least one weight or channel (with a warning).

    ``pruned``: masks already in force; those weights/channels stay pruned.
    """
    check_sparsity(sparsity)
    if scope not in SCOPES:
        raise KdnbError(f"unknown scope {scope!r}; {suggest(str(scope), SCOPES)}")
    if scores.structured:
        return masks_from_keep(keep_vectors(scores.groups, removed_channels(scores, sparsity, scope, pruned),
                                            scores.shapes), scores.shapes)
    return _weight_masks(scores, sparsity, scope, pruned or {})


def masked_model(scores: Scores, sparsity: float, scope: str = "global") -> nn.Module:
    """A plain copy of ``scores.model`` with what ``masks_at(scores, sparsity, scope)`` removes set to zero
    (structured: whole channels zeroed, which computes what deleting them computes)."""
    from kdnb.engine.prune.unstructured import clone

    model = clone(scores.model)
    with torch.no_grad():
        for name, mask in masks_at(scores, sparsity, scope).items():
            model.get_parameter(name).mul_(mask.to(model.get_parameter(name).device))
    return model


def _lowest(values: torch.Tensor, k: int) -> torch.Tensor:
    keep = torch.ones(values.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.topk(values.flatten(), k=k, largest=False).indices] = False
    return keep


def _weight_masks(scores: Scores, sparsity: float, scope: str,
                  pruned: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    values = {n: s.detach().cpu().float().masked_fill(~pruned[n].cpu(), float("-inf")) if n in pruned
              else s.detach().cpu().float() for n, s in scores.weights.items()}
    if scope == "global":
        flat = torch.cat([v.flatten() for v in values.values()])
        keep = _lowest(flat, round(sparsity * flat.numel())).split([v.numel() for v in values.values()])
        masks = {n: k.view(v.shape) for (n, v), k in zip(values.items(), keep)}
    else:
        masks = {n: _lowest(v, round(sparsity * v.numel())).view(v.shape) for n, v in values.items()}
    for name, mask in masks.items():
        if not bool(mask.any()):
            mask.view(-1)[values[name].flatten().argmax()] = True
            warnings.warn(f"sparsity {sparsity} would remove every weight of {name!r}; it keeps its "
                          "highest-scored one (a layer needs at least one)", RuntimeWarning, stacklevel=3)
    return masks


def removed_channels(scores: Scores, sparsity: float, scope: str = "global",
                     pruned: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Structured: which channels of each group to remove (True = removed) to reach ``sparsity``."""
    weights = scores.prunable
    total = sum(scores.shapes[n].numel() for n in weights)
    ranked = {}
    for group in scores.groups:
        if group.root not in scores.channels:
            continue
        values = scores.channels[group.root].clone()
        if scope == "global" and scores.criterion == "l1":
            values /= values.mean().clamp_min(1e-12)
        if pruned:
            values[_already_removed(group, pruned)] = float("-inf")
        ranked[group.root] = values

    def removal(candidates: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        gone = {root: torch.zeros(len(v), dtype=torch.bool) for root, v in ranked.items()}
        for root, index in candidates:
            gone[root][index] = True
        return gone

    if scope == "global":
        pool = []  # every channel but the best of each group, lowest score first
        for order, (root, values) in enumerate(ranked.items()):
            best = int(values.argmax())
            pool += [(float(v), order, root, i) for i, v in enumerate(values.tolist()) if i != best]
        pool.sort()
        count = len(pool) + 1

        def choice(n: int) -> list[tuple[str, int]]:
            return [(root, i) for _, _, root, i in pool[:n]]
    else:
        orders = {root: torch.argsort(values, stable=True).tolist() for root, values in ranked.items()}
        fractions = sorted({0.0} | {k / len(v) for v in ranked.values() for k in range(1, len(v))})
        count = len(fractions)

        def choice(n: int) -> list[tuple[str, int]]:
            return [(root, i) for root, order in orders.items()
                    for i in order[:min(int(fractions[n] * len(order) + 1e-9), len(order) - 1)]]

    def reached(n: int) -> float:
        keep = keep_vectors(scores.groups, removal(choice(n)), scores.shapes)
        return 1.0 - remaining_weights(keep, scores.shapes, weights) / total

    low, high = 0, count - 1  # the smallest choice whose sparsity reaches the target (it grows with n)
    if reached(high) < sparsity:
        warnings.warn(f"structured pruning reaches at most sparsity {reached(high):.4f} < {sparsity} "
                      "while keeping one channel per layer and the outputs; pruning that much",
                      RuntimeWarning, stacklevel=3)
        low = high
    while low < high:
        middle = (low + high) // 2
        if reached(middle) >= sparsity:
            high = middle
        else:
            low = middle + 1
    gone = removal(choice(low))
    for root, mask in gone.items():
        if len(mask) > 1 and int((~mask).sum()) == 1:
            warnings.warn(f"layer {root!r} keeps 1 of {len(mask)} channels at sparsity {sparsity} "
                          "(a layer needs at least one)", RuntimeWarning, stacklevel=3)
    return gone


def _already_removed(group: ChannelGroup, pruned: dict[str, torch.Tensor]) -> torch.Tensor:
    """Channels whose output slice is entirely masked already."""
    for s in group.slices:
        if s.dim == 0 and s.param in pruned:
            alive = pruned[s.param].cpu().reshape(pruned[s.param].shape[0], -1).any(1)
            gone = torch.zeros(group.size, dtype=torch.bool)
            gone[s.channel[~alive[s.index]]] = True
            return gone
    return torch.zeros(group.size, dtype=torch.bool)
