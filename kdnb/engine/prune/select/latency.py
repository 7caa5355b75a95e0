"""``scope="latency"``: structured pruning for speed, chosen by the model's measured forward on its example.

Neither fixed ranking is fastest everywhere (bench/prune_zoo.py): "global" (scores compared across layers) keeps
the accuracy but leaves the costly layers as wide as the cheap ones, and a ranking by score per MAC saved empties
depthwise and norm-heavy networks of MACs that cost little time, because those layers are bound by the memory
traffic of their activations. So two cuts are made at the target sparsity from the same scores:

- by score per *cost* saved, the cost of a unit being its MACs plus `TRAFFIC_MACS` x the activation elements it
  writes and reads (`groups._unit_traffic`: its rows' outputs, its columns' inputs, its norms' passes);
- "global",

both are deleted from copies, timed on the example batch in alternating rounds, and the ranking of the faster is
kept for the whole prune (its rounds included). A tie (within `MARGIN`) goes to "global", the more accurate.

The cost ranking alone would empty a costly layer down to the one channel it must keep (tutorial 03's ResNet
stem: 1 of 16 channels, bench/prune_zoo.py --floor), so by default it stops taking a layer's channels at
`select.channels.MAX_LAYER_SPARSITY` of them (``max_layer_sparsity``, Torch-Pruning's ``max_pruning_ratio``) and
moves on.
"""
from __future__ import annotations

from collections.abc import Callable

import statistics
import time
import warnings
from dataclasses import replace

import torch
from torch import nn

from kdnb.engine.prune.cut.channels import remove_channels
from kdnb.engine.prune.cut.masks import clone, make_permanent
from kdnb.engine.prune.graph.groups import prunable_count
from kdnb.engine.prune.score.scores import Scores
from kdnb.engine.prune.select.channels import SCOPES, removed_channels

PRUNE_SCOPES = (*SCOPES, "latency")  # what `prune` accepts: the rankings, and this choice between two of them

# How many MACs one activation element read or written costs in time, on a CPU (fp32): an FMA unit does
# 16-32 MACs a cycle where memory moves 4-8 floats, and each elementwise pass has its own overhead. A one-off
# sweep over the zoo's 9 CNNs (bench/prune_zoo.py's models, kappa 0, 16, 64, 256): 0 and 16 lose on the depthwise
# nets, 64 and 256 are within noise of each other.
TRAFFIC_MACS = 64.0
MARGIN = 0.03  # the cost-ranked cut must be this much faster (median paired ratio) to beat "global"
ROUNDS = 15  # alternating timed forwards of each candidate
SCOPE = {"cost": "macs", "global": "global"}  # the `removed_channels` scope each ranking cuts by


def cost_ranked(scores: Scores) -> Scores:
    """``scores`` whose groups' ``macs`` are their latency cost (MACs + `TRAFFIC_MACS` x traffic), for
    `removed_channels`' per-cost ranking (``scope="macs"``)."""
    groups = [replace(g, macs=g.macs + TRAFFIC_MACS * g.traffic) if g.macs is not None and g.traffic is not None
              else g for g in scores.groups]
    return replace(scores, groups=groups)


def removal(scores: Scores, sparsity: float, pruned: dict[str, torch.Tensor] | None, ranking: str,
            max_layer_sparsity: float | None = None) -> dict[str, torch.Tensor]:
    """The channels to remove under ``ranking`` ("cost" or "global"); ``max_layer_sparsity`` as in
    `removed_channels` (None: its default for each ranking, `select.channels.MAX_LAYER_SPARSITY` for the cost one)."""
    ranked = cost_ranked(scores) if ranking == "cost" else scores
    return removed_channels(ranked, sparsity, SCOPE[ranking], pruned, max_layer_sparsity)


def paired_speed(first: nn.Module, second: nn.Module, x: torch.Tensor, rounds: int = ROUNDS) -> float:
    """Median over alternating rounds of time(second) / time(first): above 1 when ``first`` is faster."""
    def clock() -> float:  # a GPU runs asynchronously: wait for it before reading the clock
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        return time.perf_counter()

    ratios = []
    with torch.inference_mode():
        for model in (first, second):
            model.eval()(x)
        for _ in range(rounds):
            start = clock()
            first(x)
            middle = clock()
            second(x)
            ratios.append((clock() - middle) / max(middle - start, 1e-9))
    return statistics.median(ratios)


def choose(model: nn.Module, scores: Scores, sparsity: float, example: torch.Tensor,
           max_layer_sparsity: float | None = None, progress: Callable[[int, int], None] | None = None) -> str:
    """"cost" or "global": the ranking whose cut at ``sparsity`` runs ``example`` faster (ties: "global"). A
    cost-ranked cut that its layer cap stopped short of ``sparsity``, and of the global cut, is not a candidate:
    it is not the size asked for. ``progress(done, 3)``: after each candidate built, and after the timing."""
    progress = progress or (lambda done, total: None)
    progress(0, 3)
    candidates, reached, dense = {}, {}, prunable_count(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cut itself warns once, when it is made
        for ranking in ("cost", "global"):
            copy = make_permanent(clone(model)).eval()
            candidates[ranking] = remove_channels(copy, removal(scores, sparsity, None, ranking, max_layer_sparsity),
                                                  example)
            reached[ranking] = 1 - prunable_count(candidates[ranking]) / dense
            progress(len(reached), 3)
    if reached["cost"] < min(sparsity, reached["global"]):
        progress(3, 3)
        return "global"
    faster = paired_speed(candidates["cost"], candidates["global"], example) > 1 + MARGIN
    progress(3, 3)
    return "cost" if faster else "global"
