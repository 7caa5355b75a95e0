"""Score once, mask at any sparsity: `masks_at` turns a criterion's `Scores` into masks for a given sparsity
(cheap: a sort), so a slider can move; `masked_model` is a copy of the scored model with those masks applied.

Sparsity always means the fraction of *prunable weights* (those of every Linear and Conv layer; biases
and BatchNorm parameters are not counted) that are zero or gone, in both modes."""
from __future__ import annotations

import torch
from torch import nn

from kdnb.errors import KdnbError
from kdnb.engine import checks
from kdnb.engine.prune.options import check_scope
from kdnb.engine.prune.cut.masks import clone
from kdnb.engine.prune.graph.groups import keep_vectors, masks_from_keep
from kdnb.engine.prune.score.scores import Scores
from kdnb.engine.prune.select.channels import SCOPES, removed_channels
from kdnb.engine.prune.select.patterns import parse_pattern, pattern_masks
from kdnb.engine.prune.select.weights import weight_masks


def masks_at(scores: Scores, sparsity: float, scope: str = "global",
             pruned: dict[str, torch.Tensor] | None = None, pattern: str | None = None,
             gradual: bool = False, max_layer_sparsity: float | None = None) -> dict[str, torch.Tensor]:
    """Boolean masks (True = kept) that remove the lowest-scored weights or channels, at ``sparsity``.

    Unstructured: the ``round(sparsity * n)`` lowest-scored weights, among all layers ("global", as
    ``torch.nn.utils.prune.global_unstructured``) or in each layer ("local"). Structured: whole channels
    in ascending score ("global"; l1 scores are divided by their layer's mean first, as magnitudes of
    different layers are not comparable), in ascending score per MAC the channel's removal saves ("macs": the
    speed ranking), or the same fraction of each layer ("local"), adding channels
    until the prunable-weight sparsity reaches ``sparsity`` (it may overshoot by less than one channel).
    Each layer keeps at least one weight or channel (with a warning). Criteria marked ``per_row`` (Wanda)
    compare weights within each output row when ``scope="local"``.

    ``pruned``: masks already in force; those weights/channels stay pruned. ``pattern="N:M"`` (unstructured):
    in every row, N of each M consecutive input channels are kept (a conv's at each kernel position), the
    highest-scored (``sparsity`` = 1 - N/M); a layer whose input channels M does not divide gets no mask
    (`pattern_misfits`).
    ``gradual``: a step of an iterative or agp schedule (criteria marked ``raw_when_gradual`` rank raw scores).
    ``max_layer_sparsity`` (structured): the most of any layer's channels removed, as in `kdnb.prune`; default
    `MAX_LAYER_SPARSITY` for "macs", no cap but the one channel kept for the others. ``scope="latency"`` is
    `prune`'s alone: it times two cuts with their channels deleted, which masks cannot show.
    """
    checks.check_sparsity(sparsity)
    if scope == "latency":
        raise KdnbError("scope='latency' times two cuts with their channels deleted, which masks cannot show; "
                        "use scope='macs' for a cost-ranked preview, or kdnb.prune(..., scope='latency')")
    check_scope(scope, scores.structured, max_layer_sparsity, SCOPES)
    if scores.structured:
        removed = removed_channels(scores, sparsity, scope, pruned, max_layer_sparsity)
        return masks_from_keep(keep_vectors(scores.groups, removed, scores.shapes), scores.shapes)
    if pattern is not None:
        return pattern_masks(scores, *parse_pattern(pattern), pruned or {})  # type: ignore[misc]
    return weight_masks(scores, sparsity, scope, pruned or {}, gradual)


def masked_model(scores: Scores, sparsity: float, scope: str = "global") -> nn.Module:
    """A plain copy of ``scores.model`` with what ``masks_at(scores, sparsity, scope)`` removes set to zero
    (structured: whole channels zeroed, which computes what deleting them computes)."""
    model = clone(scores.model)
    with torch.no_grad():
        for name, mask in masks_at(scores, sparsity, scope).items():
            model.get_parameter(name).mul_(mask.to(model.get_parameter(name).device))
    return model
