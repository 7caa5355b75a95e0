"""How many re-scored rounds a structured one-shot prune with data can afford.

Each round is a calibration pass to score (`stream.each_gram`) and one through the pruned and the dense model to
re-solve (`stream.Lockstep`): about three forward passes of the calibration set. On the tutorials' networks
(a digits MLP, cnn_bn: up to 10^10 FLOPs a pass) eight rounds take seconds and win accuracy
(bench/prune_oneshot.py); a ResNet-18 at 224x224 on 128 images costs 4.7 x 10^11 FLOPs a pass, so eight rounds
would take minutes on a laptop. The rounds are therefore capped so that all of them together stay within
`ROUNDS_FLOPS`, counted on one sample by ``torch.utils.flop_counter``.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdnb.engine.device import eval_mode, model_device, to_device

PASSES_PER_ROUND = 3
ROUNDS_FLOPS = 2**38  # ~2.7 x 10^11: eight rounds for networks up to ~10^10 FLOPs a calibration pass


def sample_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of ``model`` on one sample of ``example`` (batch first)."""
    one = example[:1] if isinstance(example, torch.Tensor) and example.dim() > 0 else example
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), eval_mode(model):
        model(to_device(one, model_device(model)))
    return counter.get_total_flops()


def affordable_rounds(model: nn.Module, example: torch.Tensor, data: Iterable, samples: int, most: int) -> int:
    """``most`` rounds, or fewer (at least one) where their calibration passes would pass `ROUNDS_FLOPS`."""
    dataset = getattr(data, "dataset", None)
    count = min(samples, len(dataset)) if hasattr(dataset, "__len__") else samples  # type: ignore[arg-type]
    try:
        per_round = PASSES_PER_ROUND * sample_flops(model, example) * count
    except (RuntimeError, TypeError, ValueError):  # an example the model cannot run: the trace reports it, by name
        return most
    return max(1, min(most, ROUNDS_FLOPS // max(1, per_round)))
