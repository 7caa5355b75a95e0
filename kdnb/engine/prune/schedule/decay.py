"""Decoupled weight decay for the fine-tuning of a gradual prune: the default optimizer of an agp schedule.

AdamW (Loshchilov & Hutter 2019) shrinks every decayed weight by ``lr * weight_decay`` at each step, apart from the
gradient step. It decays the weights of the Linear and Conv layers whose outputs no normalisation layer reads:
a weight that feeds a BatchNorm (or LayerNorm, GroupNorm, InstanceNorm) computes the same function at any scale,
so decaying it only raises its effective learning rate (van Laarhoven 2017, "L2 Regularization versus Batch and
Weight Normalization"; Zhang et al. 2019, "Three Mechanisms of Weight Decay Regularization"). Biases and the
normalisations' own parameters are not decayed.

Measured (bench/prune_sparsity.py's harness, LeNet-300-100 at 99 %, agp over 20 epochs, Adam(W) lr 1e-2, 12 seeds
x 3 shufflings of the fine-tuning = 36 prunes, dense 0.9831; 2026-12-02, an AMD EPYC): no decay 0.9746 (the
three 12-seed means 0.9733 / 0.9775 / 0.9731), 0.3 0.9772, 1.0 0.9814 (0.9800 / 0.9819 / 0.9824). On cnn_bn,
every conv weight decayed too at 1.0 lost 2-8 pp (95 % 0.8997 vs 0.9777 on seed 0): the reason the weights that
feed a normalisation are left out. With them left out, cnn_bn decays only its classifier, and that did not help
(bench/prune_resolve.py's harness, 9 seeds, the default with the decay vs without, lr 1e-2 / 1e-3): 95 % 0.9647 /
0.9539 vs 0.9629 / 0.9539, 98 % 0.9223 / 0.8858 vs 0.9260 / 0.8997 (-1.4 pp at prune's lr, on seeds 0-2 and 3-8
alike), so by default a model with normalisation layers is not decayed (`default`).
At prune's default lr 1e-3 (LeNet, 36 prunes) the decay neither helps nor hurts (1.0: 0.9700, 0.3: 0.9704, none:
0.9705). In a short run it costs: notebook 02's agp over 3 epochs (MLP 64-256-256 at 99 %, lr 1e-3, every step
re-solved) 0.9610 with 1.0 against 0.9638 without (the saved notebook), so the default decays only runs of
`FROM_EPOCHS` or more. After a one-shot cut it costs too (OBS start at 98 %, 20 epochs, 12 seeds: 0.9735 vs 0.9761),
so one-shot fine-tuning keeps Adam unless ``weight_decay`` is set; so does iterative (not measured).
Tried and not kept (LeNet at 99 %, lr 1e-2 unless said, 12 seeds, shuffling 0 where the 1.0 default gives 0.9800):
2.0 0.9777, 3.0 0.9756; lr 1e-3 with 3.0 0.9636, with 10 0.8916; 1.0 switched off after the ramp 0.9786; 2.0 in
the ramp and none after 0.9819 / 0.9791 / 0.9789 over three shufflings (mean 0.9800 against 1.0's 0.9814).
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
    last normalisation (a classifier), where it regularises nothing and cost 1.4 pp (cnn_bn, see above)."""
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
