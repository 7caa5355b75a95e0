"""N:M patterns (NVIDIA's 2:4 sparsity): N of every M consecutive input weights of each row kept."""
from __future__ import annotations

import re

import torch
from torch import nn

from kdnb.errors import KdnbError
from kdnb.engine.prune.graph.groups import prunable_weights
from kdnb.engine.prune.score import calibration
from kdnb.engine.prune.score.scores import Scores
from kdnb.engine.prune.select.weights import scored_values


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    """``"2:4"`` -> (2, 4): N of every M consecutive input weights kept; a one-line error otherwise."""
    if pattern is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if not match:
        raise KdnbError(f"pattern should be 'N:M' (keep N of every M consecutive weights), e.g. '2:4'; got {pattern!r}")
    n, m = int(match[1]), int(match[2])
    if not 0 < n < m:
        raise KdnbError(f"pattern {pattern!r} keeps N={n} of every M={m} weights: it needs 0 < N < M, e.g. '2:4'")
    return n, m


def pattern_masks(scores: Scores, n: int, m: int, pruned: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """N:M masks along each row's input channels (a conv's at each kernel position) of the layers whose input
    channels M divides; the others get none (they stay dense)."""
    masks = {}
    for name, values in scored_values(scores, pruned).items():
        if not pattern_fits(values.shape, m):
            continue
        order = calibration.input_channel_order(values.shape)
        blocks = values.reshape(values.shape[0], -1)[:, order].reshape(values.shape[0], -1, m)
        keep = torch.zeros_like(blocks, dtype=torch.bool).scatter_(2, blocks.topk(n, dim=2).indices, True)
        mask = torch.empty(values.shape[0], order.numel(), dtype=torch.bool)
        mask[:, order] = keep.view(values.shape[0], -1)
        masks[name] = mask.view(values.shape)
    return masks


def pattern_fits(shape: torch.Size, m: int) -> bool:
    """N:M groups a weight of this shape: M divides its input channels (a Linear's inputs, a conv's per group)."""
    return shape[1] % m == 0


def pattern_misfits(model: nn.Module, pattern: str | None) -> dict[str, int]:
    """The prunable layers N:M cannot divide, with their input channels (a Linear's inputs, a conv's input channels
    per group: not a multiple of M, such as an RGB stem's 3); they stay dense, as NVIDIA's ASP leaves them.
    A `KdnbError` when that is every layer: the pattern would prune nothing."""
    parsed = parse_pattern(pattern)
    if parsed is None:
        return {}
    weights = prunable_weights(model)
    misfits = {name: w.shape[1] for name, w in weights.items() if not pattern_fits(w.shape, parsed[1])}
    if misfits and len(misfits) == len(weights):
        listed = ", ".join(f"{name!r}: {width}" for name, width in list(misfits.items())[:3])
        raise KdnbError(f"pattern {pattern!r} groups every {parsed[1]} consecutive input channels, but no layer's "
                        f"input channels are a multiple of {parsed[1]} ({listed}{', ...' if len(misfits) > 3 else ''}"
                        "); use another M or no pattern")
    return misfits
