"""Structured selection: which channels of each coupled group go to reach a sparsity, ranked globally, per
MAC their removal saves ("macs") or layer by layer ("local"), never more than a layer's cap."""
from __future__ import annotations

import warnings

import torch

from kdnb.engine.prune.graph.groups import ChannelGroup, keep_vectors, remaining_weights
from kdnb.engine.prune.score import criteria
from kdnb.engine.prune.score.scores import Scores

SCOPES = ("global", "local", "macs")
# The most of any group's channels the cost ranking ("macs", and scope="latency"'s cost-ranked cut) removes by
# default (`layer_cap`): the cap that kept tutorial 03's ResNet within a point of the global cut's accuracy while
# keeping most of the speed-up (bench/prune_zoo.py --floor); it leaves scope="latency" as fast as Torch-Pruning
# across the zoo (bench/prune_zoo.py --zoo-only).
MAX_LAYER_SPARSITY = 0.5


def removed_channels(scores: Scores, sparsity: float, scope: str = "global",
                     pruned: dict[str, torch.Tensor] | None = None,
                     max_layer_sparsity: float | None = None) -> dict[str, torch.Tensor]:
    """Structured: which channels of each group to remove (True = removed) to reach ``sparsity``.

    No group loses more than ``max_layer_sparsity`` of its channels (Torch-Pruning's ``max_pruning_ratio``):
    once one reaches it, the ranking moves on to the others. None: `layer_cap` of ``scope``."""
    weights = scores.prunable
    total = sum(scores.shapes[n].numel() for n in weights)
    cap = layer_cap(scope, max_layer_sparsity)
    ranked, allowed = {}, {}
    for group in scores.groups:
        if group.root not in scores.channels:
            continue
        values = scores.channels[group.root].clone()
        gone = _already_removed(group, pruned) if pruned else torch.zeros(len(values), dtype=torch.bool)
        if scope in ("global", "macs") and criteria.REGISTRY[scores.criterion].normalise:  # by the mean left
            values /= values[~gone].mean().clamp_min(1e-12) if bool((~gone).any()) else 1.0
        if scope == "macs" and group.macs is not None:  # score per MAC its removal saves
            values /= group.macs.clamp_min(1e-12)
        values[gone] = float("-inf")
        ranked[group.root] = values
        allowed[group.root] = max(_most_removed(len(values), cap), int(gone.sum()))  # what is gone stays gone

    def removal(candidates: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        gone = {root: torch.zeros(len(v), dtype=torch.bool) for root, v in ranked.items()}
        for root, index in candidates:
            gone[root][index] = True
        return gone

    if scope in ("global", "macs"):
        pool = []  # each group's lowest channels, as many as its cap allows (never its best), lowest score first
        for order, (root, values) in enumerate(ranked.items()):
            best = int(values.argmax())
            lowest = sorted((float(v), order, root, i) for i, v in enumerate(values.tolist()) if i != best)
            pool += lowest[:allowed[root]]
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
                    for i in order[:min(int(fractions[n] * len(order) + 1e-9), allowed[root])]]

    def reached(n: int) -> float:
        keep = keep_vectors(scores.groups, removal(choice(n)), scores.shapes)
        return 1.0 - remaining_weights(keep, scores.shapes, weights) / total

    low, high = 0, count - 1  # the smallest choice whose sparsity reaches the target (it grows with n)
    if reached(high) < sparsity:
        capped = f", at most {cap:g} of each layer's channels (max_layer_sparsity)" if cap < 1 else ""
        warnings.warn(f"structured pruning reaches at most sparsity {reached(high):.4f} < {sparsity} "
                      f"while keeping one channel per layer{capped} and the outputs; pruning that much",
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


def rounded(removed: dict[str, torch.Tensor], scores: Scores, pruned: dict[str, torch.Tensor] | None,
            multiple: int) -> dict[str, torch.Tensor]:
    """``removed`` with each group keeping a multiple of ``multiple`` channels (or all of them): the best-scored
    channels this cut removed come back (never one an earlier cut removed)."""
    groups = {group.root: group for group in scores.groups}
    result = {}
    for root, gone in removed.items():
        kept = int((~gone).sum())
        missing = min(len(gone), -(-kept // multiple) * multiple) - kept
        earlier = _already_removed(groups[root], pruned) if pruned else torch.zeros_like(gone)
        candidates = (gone & ~earlier).nonzero().flatten()
        best = candidates[torch.argsort(scores.channels[root][candidates], descending=True, stable=True)[:missing]]
        result[root] = gone.clone()
        result[root][best] = False
    return result


def layer_cap(scope: str, max_layer_sparsity: float | None) -> float:
    """The largest fraction of a group's channels a cut may remove: ``max_layer_sparsity``, or by default
    `MAX_LAYER_SPARSITY` for the cost ranking ("macs"), which alone would cut the layers whose channels cost the
    most down to one channel (tutorial 03's stem: 1 of 16), and 1 (only the channel each layer keeps) for the others."""
    if max_layer_sparsity is not None:
        return max_layer_sparsity
    return MAX_LAYER_SPARSITY if scope == "macs" else 1.0


def _most_removed(size: int, cap: float) -> int:
    """How many of ``size`` channels a group may lose under ``cap``: at most ``cap * size``, and never all."""
    return min(size - 1, int(cap * size + 1e-9))


def _already_removed(group: ChannelGroup, pruned: dict[str, torch.Tensor]) -> torch.Tensor:
    """Channels whose output slice is entirely masked already."""
    for s in group.slices:
        if s.dim == 0 and s.param in pruned:
            alive = pruned[s.param].cpu().reshape(pruned[s.param].shape[0], -1).any(1)
            gone = torch.zeros(group.size, dtype=torch.bool)
            gone[s.channel[~alive[s.index]]] = True
            return gone
    return torch.zeros(group.size, dtype=torch.bool)
