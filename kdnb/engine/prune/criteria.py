"""Importance criteria: how much each weight matters. Low score = pruned first.

Each criterion is one formula on one parameter tensor and returns a score per element, of the
same shape. Structured pruning adds a channel's element scores over every tensor slice the channel
owns (see `kdnb.engine.prune.groups`). The statistics some formulas need (squared gradients, the
Hessian diagonal) are estimated over batches of data in `kdnb.engine.prune.estimate`.
"""
from __future__ import annotations

import torch

CRITERIA = ("l1", "taylor", "hessian", "slimming", "random")
NEEDS_DATA = ("taylor", "hessian", "slimming")


def l1(weight: torch.Tensor) -> torch.Tensor:
    r"""Magnitude: :math:`s_k = |w_k|`.

    Han et al. 2015, "Learning both Weights and Connections for Efficient Neural Networks";
    summed over a channel it is the L1 norm of Li et al. 2017, "Pruning Filters for Efficient ConvNets".
    """
    return weight.abs()


def taylor(weight: torch.Tensor, grad_sq: torch.Tensor) -> torch.Tensor:
    r"""First-order Taylor: :math:`s_k = \frac{1}{B}\sum_b (g_{k,b}\, w_k)^2 = w_k^2\, \overline{g_k^2}`.

    Removing :math:`w_k` changes the loss by about :math:`g_k w_k`; its square, averaged over the
    ``B`` batches, is the importance of Molchanov et al. 2019, "Importance Estimation for Neural
    Network Pruning" (the per-parameter form of Molchanov et al. 2017). ``grad_sq`` is
    :math:`\overline{g_k^2}`, the batch gradient squared and averaged over batches. BatchNorm scales and
    shifts are scored like any other parameter.
    """
    return weight.pow(2) * grad_sq


def hessian(weight: torch.Tensor, hessian_diag: torch.Tensor) -> torch.Tensor:
    r"""Optimal Brain Damage saliency: :math:`s_k = \tfrac{1}{2}\, h_{kk}\, w_k^2`.

    LeCun, Denker & Solla 1990, "Optimal Brain Damage": at a minimum the loss grows by
    :math:`\tfrac{1}{2} h_{kk} w_k^2` when :math:`w_k` is set to zero (diagonal Hessian, cross terms
    ignored). ``hessian_diag`` is :math:`h_{kk}`, estimated over all batches by the empirical Fisher
    :math:`h_{kk} \approx \frac{1}{N}\sum_n (\partial L_n / \partial w_k)^2` (per-sample gradients squared;
    a common stand-in for the Hessian near a minimum, never negative) or by Hutchinson's estimator
    :math:`\mathrm{diag}(H) \approx \mathbb{E}_z[z \odot Hz]`, :math:`z` Rademacher (exact in expectation,
    noisy with few probes).
    """
    return 0.5 * hessian_diag * weight.pow(2)


def slimming(gamma: torch.Tensor) -> torch.Tensor:
    r"""Network slimming: :math:`s_c = |\gamma_c|`, the BatchNorm scale of channel ``c``.

    Liu et al. 2017, "Learning Efficient Convolutional Networks through Network Slimming": train with
    :math:`L = L_{task} + \lambda \sum_c |\gamma_c|` (see `slimming_penalty`), then prune small
    :math:`|\gamma_c|`.
    """
    return gamma.abs()


def slimming_penalty(gammas: list[torch.Tensor]) -> torch.Tensor:
    r"""The sparsity term of network slimming: :math:`\sum_c |\gamma_c|` over every BatchNorm scale."""
    return sum(g.abs().sum() for g in gammas)  # type: ignore[return-value]


def random(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    r"""The baseline: :math:`s_k \sim U(0, 1)`, independent of the weights."""
    return torch.rand(weight.shape, generator=generator).to(weight.device)
