r"""The output layer re-solved for the dense model's predictions, not its logits.

Least squares reproduces every layer's outputs in the squared error. For the layer whose outputs *are* the
model's (a classifier's logits) the error that matters is between the two predicted distributions, so after
its least-squares solve `refit_output` minimises, over the kept weights ``W`` (out, d) and bias ``b``,

.. math:: \frac1N \sum_n \mathrm{KL}\big(\mathrm{softmax}(z_n) \,\Vert\, \mathrm{softmax}(W a_n + b)\big)
   + \rho \lVert W - W_{LS} \rVert^2

on the calibration inputs ``a_n`` that the pruned layers before it produce, ``z_n`` the dense model's logits:
a convex problem (multinomial logistic regression on the dense model's soft labels, Hinton et al. 2015's
distillation loss at temperature 1, for one layer), solved by L-BFGS from the least-squares solution
``W_LS``, whose pull ``rho`` (`RIDGE`) keeps the fit from chasing the near one-hot predictions of the
training samples. It reads no labels, as the least squares does not. The result is kept only where its
divergence is below that of the least-squares and of the plainly masked weights.

Measured by bench/prune_oneshot.py (its teachers, seeds and calibration, no fine-tuning; the default prunes with
a least-squares output layer against this one; numbers in docs/benchmarks.md): it gains on the notebook-02 MLP at
75 and 90 % of the hidden neurons and at 95 and 98 % of its single weights, and on cnn_bn's channels at every
sparsity. Without the pull (``rho = 0``) the fit gained nothing; a stronger pull gained less than `RIDGE`. In every
re-scored round instead of the last it gained nothing either: group OBS's costs assume least-squares consumers.

Cost: the output layer's calibration inputs and the dense logits, ``rows x (d + classes)`` numbers in fp64, and
up to `ITERATIONS` L-BFGS steps of a few ``rows x d x classes`` products; a layer that would pass `MAX_BYTES` or
`MAX_MACS` keeps its least-squares solution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdnb.engine.device import eval_mode, model_device, to_device


RIDGE = 1e-4  # rho (the measurements above)
# L-BFGS iterations at most, with tolerances that fp64 allows. Only the pull bends the directions that sharpen
# near one-hot predictions, so the tutorial teacher's refit runs all 500 (its time: bench/prune_oneshot.py); L-BFGS's
# default tolerances stopped it after ~130 evaluations, so loosely that two processes ended 1e-4 away from one
# (tests/integration/test_distributed.py)
ITERATIONS = 500
MAX_BYTES = 256 * 2**20
MAX_MACS = 2**27  # rows x inputs x outputs: a larger output layer (a 1000-class head) keeps its least squares


def prediction_divergence(logits: torch.Tensor, dense_logits: torch.Tensor) -> torch.Tensor:
    r""":math:`\frac1N \sum_n \sum_k p_{nk} (\log p_{nk} - \log q_{nk})`, ``p = softmax(dense_logits)``,
    ``q = softmax(logits)``, softmax over the last dimension: KL(dense predictions || pruned predictions)."""
    dense = F.log_softmax(dense_logits, -1)
    return (dense.exp() * (dense - F.log_softmax(logits, -1))).sum(-1).mean()


class OutputCapture:
    """Forward hook on the layer ``name`` of a model: its inputs and outputs on each batch, and whether its
    outputs are the model's own (the same tensor the model returns), checked by `is_output`."""

    def __init__(self, model: nn.Module, name: str):
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self.handle = model.get_submodule(name).register_forward_hook(self)

    def __call__(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        self.inputs.append(inputs[0].detach())
        self.outputs.append(out)

    def is_output(self, model_outputs: list[object]) -> bool:
        return len(self.outputs) == len(model_outputs) and all(a is b for a, b in zip(self.outputs, model_outputs))


def fits(rows: int, width: int, classes: int) -> bool:
    """Whether the refit of an output layer of ``width`` inputs and ``classes`` outputs on ``rows`` rows fits in
    `MAX_BYTES` and each of its products in `MAX_MACS`."""
    return rows * (width + classes) * 8 <= MAX_BYTES and rows * width * classes <= MAX_MACS


@torch.no_grad()
def _divergence(weight: torch.Tensor, bias: torch.Tensor, a: torch.Tensor, target: torch.Tensor) -> float:
    return float(prediction_divergence(a @ weight.T + bias, target))


@torch.no_grad()
def refit_output(weight: torch.Tensor, bias: torch.Tensor, keep: torch.Tensor, bias_keep: torch.Tensor,
                 a: torch.Tensor, target: torch.Tensor, masked: tuple[torch.Tensor, torch.Tensor],
                 ridge: float = RIDGE) -> tuple[torch.Tensor, torch.Tensor]:
    """The output layer's kept ``weight`` (out, d) and ``bias`` (out,) that minimise `prediction_divergence`
    from the dense logits ``target`` (rows, out) on the inputs ``a`` (rows, d), plus ``ridge`` x the squared
    distance to the starting (least-squares) ``weight``; fp64. Returns the best of that, the start and the plainly
    ``masked`` weights, by divergence."""
    used = keep.any(0).to(a.device)  # inputs no row keeps (removed channels) take no part
    keep, bias_keep, x = keep.to(a)[:, used], bias_keep.to(a), a[:, used]
    start = weight.detach().to(a)[:, used] * keep
    w, b = start.clone(), bias.detach().to(a) * bias_keep
    log_dense = torch.log_softmax(target, -1)
    dense = log_dense.exp()
    optimizer = torch.optim.LBFGS([w, b], max_iter=ITERATIONS, history_size=20, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12)  # the optimum to fp64's noise

    def closure() -> torch.Tensor:  # `prediction_divergence` + the pull, and their gradient by hand
        log_pruned = torch.log_softmax(x @ (w * keep).T + b * bias_keep, -1)
        excess = (log_pruned.exp() - dense) / len(x)  # d KL / d logits = (softmax(logits) - p) / N
        w.grad = (excess.T @ x) * keep + 2 * ridge * (w - start)
        b.grad = excess.sum(0) * bias_keep
        return (dense * (log_dense - log_pruned)).sum(-1).mean() + ridge * (w - start).pow(2).sum()

    optimizer.step(closure)
    full = torch.zeros_like(weight, dtype=a.dtype, device=a.device)
    fitted, least_squares = full.clone(), full.clone()
    fitted[:, used], least_squares[:, used] = w * keep, start
    candidates = [(fitted, b * bias_keep), (least_squares, bias.detach().to(a) * bias_keep),
                  tuple(t.detach().to(a) for t in masked)]
    return min(candidates, key=lambda c: _divergence(*c, a, target))


@torch.no_grad()
def output_data(model: nn.Module, dense: nn.Module, name: str, batches: list[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The inputs ``a`` of layer ``name`` in ``model`` and the logits of ``dense`` on ``batches``, both fp64 and
    one row per prediction (a sequence model's every token), when that layer's outputs are the model's and its
    refit `fits` the bounds; else None."""
    capture = OutputCapture(model, name)
    try:
        with eval_mode(model), eval_mode(dense):
            outputs = [model(to_device(x, model_device(model))) for x in batches]
            if not capture.is_output(outputs):
                return None
            rows = sum(o.numel() // o.shape[-1] for o in capture.outputs)
            if not fits(rows, capture.inputs[0].shape[-1], capture.outputs[0].shape[-1]):
                return None
            targets = [dense(to_device(x, model_device(dense))) for x in batches]
    finally:
        capture.handle.remove()
    a = torch.cat([x.reshape(-1, x.shape[-1]) for x in capture.inputs]).double()
    target = torch.cat([t.reshape(-1, t.shape[-1]) for t in targets]).double().to(a.device)
    return a, target
