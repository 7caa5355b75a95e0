"""Layer-wise criteria from each layer's inputs on calibration samples: Optimal Brain Surgeon with the layer
Hessian, and Wanda."""
from __future__ import annotations

from collections.abc import Callable

import torch

from kdnb.engine.prune.graph.groups import prunable_weights
from kdnb.engine.prune.score import calibration, stream
from kdnb.engine.prune.score.registry import Context, Criterion, Statistic, register


def obs(weight: torch.Tensor, inverse_hessian_diag: torch.Tensor) -> torch.Tensor:
    r"""Optimal Brain Surgeon saliency with the layer Hessian: :math:`s_q = w_q^2 / (2\,[H^{-1}]_{qq})`,
    :math:`H = 2 X^\top X` for the layer's inputs :math:`X` (one row per sample, im2col for a conv).

    Hassibi & Stork 1993, "Second order derivatives for network pruning: Optimal Brain Surgeon": removing
    :math:`w_q` and moving the others by :math:`\delta w = -\frac{w_q}{[H^{-1}]_{qq}} H^{-1} e_q` raises the
    layer's squared output error by exactly :math:`s_q` (layer-wise: Dong et al. 2017; Frantar & Alistarh
    2022, 2023 "SparseGPT"). The update is `kdnb.engine.prune.rebuild.reconstruct` (``reconstruct=True``).
    ``inverse_hessian_diag`` is :math:`[H^{-1}]_{qq}` of the input position ``q`` of each weight (damped).
    A channel (structured) sums the saliencies of the weights that read it (``reads``).
    """
    return weight.pow(2) / (2 * inverse_hessian_diag)


def wanda(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    r"""Wanda: :math:`s_{ij} = |w_{ij}| \cdot \lVert X_j \rVert_2`, compared within each output row ``i``.

    Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models": a weight matters as
    much as its magnitude times the norm of the input feature it multiplies (over every calibration sample
    and, for a conv, every position). ``input_norm`` is :math:`\lVert X_j\rVert_2` of each weight's input.
    A channel ``j`` (structured, ``reads``) scores :math:`\lVert X_j \rVert_2 \sum_i |w_{ij}|` over the weights
    that read it: Wanda-sp (An et al. 2024, "Fluctuation-based Adaptive Structured Pruning for Large Language
    Models").
    """
    return weight.abs() * input_norm


def _per_input(ctx: Context, of_gram: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, tuple]:
    """A statistic of each layer's input Gram matrix ``X^T X``, one value per input, shaped as the weight; one
    layer's Gram matrix held at a time (`stream.each_gram`)."""
    weights = prunable_weights(ctx.model)
    # a weight tied under two names is scored once, under its first (`prunable_weights`), by that layer's inputs
    return {n: (weights[n].detach(), of_gram(g).to(weights[n]).view(1, *weights[n].shape[1:]))
            for n, g in stream.each_gram(ctx.model, ctx.data, ctx.samples, progress=ctx.progress)  # type: ignore
            if n in weights}


def _inverse_hessian_diag(gram: torch.Tensor) -> torch.Tensor:
    """diag of H^-1, H = 2 (X^T X + damp I)."""
    return torch.cholesky_inverse(torch.linalg.cholesky(calibration.damped_hessian(gram))).diagonal()


INVERSE_HESSIAN_DIAG = Statistic(name="inverse_hessian_diag", needs_data=True,
                                 estimate=lambda ctx: _per_input(ctx, _inverse_hessian_diag))
INPUT_NORM = Statistic(name="input_norm", needs_data=True,
                       estimate=lambda ctx: _per_input(ctx, lambda g: g.diagonal().clamp_min(0).sqrt()))

register(Criterion(name="obs", formula=obs, statistic=INVERSE_HESSIAN_DIAG, label="OBS", colour="tab:olive",
                   layerwise=True, reselect=True, reads=True))
register(Criterion(name="wanda", formula=wanda, statistic=INPUT_NORM, label="Wanda", colour="tab:pink", per_row=True,
                   layerwise=True, reads=True))
