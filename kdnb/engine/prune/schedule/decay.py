"""Decoupled weight decay for the fine-tuning of a gradual prune: the default optimizer of an agp schedule.

AdamW (Loshchilov & Hutter 2019) shrinks every decayed weight by ``lr * weight_decay`` at each step, apart from the
gradient step. It decays the weights of the Linear and Conv layers whose outputs no normalisation layer reads:
a weight that feeds a BatchNorm (or LayerNorm, GroupNorm, InstanceNorm) computes the same function at any scale,
so decaying it only raises its effective learning rate (van Laarhoven 2017, "L2 Regularization versus Batch and
Weight Normalization"; Zhang et al. 2019, "Three Mechanisms of Weight Decay Regularization"). Biases and the
normalisations' own parameters are not decayed.

Measured by bench/prune_sparsity.py (LeNet-300-100 at 99 %, agp over 20 epochs, 36 prunes) and
bench/prune_resolve.py (cnn_bn); their numbers are in docs/benchmarks.md. On LeNet at Adam's lr 1e-2 the decay
brings the default to 99 % within half a point of dense; at prune's default lr 1e-3 it neither helps nor hurts.
Decaying the weights that feed a normalisation costs cnn_bn several points, and with those left out cnn_bn decays
only its classifier, which did not help, so by default a model with normalisation layers is not decayed
(`default`). In a short run it costs (notebook 02's agp over 3 epochs), so the default decays only runs of
`FROM_EPOCHS` or more; after a one-shot cut it costs too, so one-shot fine-tuning keeps Adam unless
``weight_decay`` is set; so does iterative (not measured). Stronger decays (2.0, 3.0, 10) and a decay only during
the ramp were tried and not kept.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from kdnb.engine.device import eval_mode, model_device
from kdnb.engine.prune.graph.groups import NORMS, PRUNABLE

WEIGHT_DECAY = 1.0  # prune's default in an agp schedule of FROM_EPOCHS or more, with the default optimizer
FROM_EPOCHS = 10  # shorter runs have nothing to regularise: the decay only pulls the re-solved weights off their fit


def default(model: nn.Module, schedule: str, finetune: int) -> float:
    """``prune``'s decay when ``weight_decay`` is None: `WEIGHT_DECAY` in an agp run of `FROM_EPOCHS` or more of a
    model without normalisation layers, else 0. In a normalised model the decay reaches only the weights after the
    last normalisation (a classifier), where it regularises nothing and cost accuracy (cnn_bn, see above)."""
    normalised = any(isinstance(m, NORMS) for m in model.modules())
    return WEIGHT_DECAY if schedule == "agp" and finetune >= FROM_EPOCHS and not normalised else 0.0


def function_scaled_weights(model: nn.Module, example: torch.Tensor) -> set[int]:
    """The ids of the weights of the Linear and Conv layers whose outputs no normalisation layer reads (traced on
    ``example``): the weights whose scale changes what the model computes. A masked weight is its
    ``weight_orig``, the parameter the optimizer updates."""
    produced: dict[int, nn.Module] = {}
    normalised: set[int] = set()

    def record(module: nn.Module, args: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor):
            produced[id(output)] = module

    def read(module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor) and id(args[0]) in produced:
            normalised.add(id(produced[id(args[0])]))

    layers = [m for m in model.modules() if isinstance(m, PRUNABLE)]
    hooks = [m.register_forward_hook(record) for m in layers]
    hooks += [m.register_forward_pre_hook(read) for m in model.modules() if isinstance(m, NORMS)]
    try:
        with torch.no_grad(), eval_mode(model):  # eval: the trace leaves BatchNorm's running statistics alone
            model(example.to(model_device(model)))
    finally:
        for hook in hooks:
            hook.remove()
    weights = [getattr(m, "weight_orig", getattr(m, "weight", None)) for m in layers if id(m) not in normalised]
    return {id(w) for w in weights if isinstance(w, nn.Parameter)}


def adamw(model: nn.Module, example: torch.Tensor, lr: float, weight_decay: float
          ) -> Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]:
    """A factory ``params -> AdamW(lr)`` decaying by ``weight_decay`` only `function_scaled_weights` of ``model``."""
    decayed = function_scaled_weights(model, example)

    def build(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        params = list(params)
        return torch.optim.AdamW([{"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
                                  {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0}], lr=lr)
    return build
