"""Loss-based criteria from gradients: first-order Taylor (per weight, per channel group) and Optimal Brain
Damage's diagonal Hessian. Their statistics are estimated by `kdnb.engine.prune.score.estimate`."""
from __future__ import annotations

import torch

from kdnb.engine.prune.score import estimate
from kdnb.engine.prune.score.registry import Context, Criterion, Statistic, register


def taylor(weight: torch.Tensor, grad_sq: torch.Tensor) -> torch.Tensor:
    r"""First-order Taylor: :math:`s_k = \frac{1}{B}\sum_b (g_{k,b}\, w_k)^2 = w_k^2\, \overline{g_k^2}`.

    Removing :math:`w_k` changes the loss by about :math:`g_k w_k`; its square, averaged over the
    ``B`` batches of the calibration samples, is the importance of Molchanov et al. 2019, "Importance
    Estimation for Neural Network Pruning" (the per-parameter form of Molchanov et al. 2017). ``grad_sq`` is
    :math:`\overline{g_k^2}`, the batch gradient squared and averaged over batches. BatchNorm scales and
    shifts are scored like any other parameter. Summed over a channel (structured) this is the sum of the
    per-weight terms; `taylor_group` is the paper's group form.
    """
    return weight.pow(2) * grad_sq


def taylor_group(gradient_weight: torch.Tensor) -> torch.Tensor:
    r"""Group Taylor of channels: :math:`s_c = \frac{1}{B}\sum_b \big(\sum_{s \in c} g_{s,b}\, w_s\big)^2`.

    Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning", eq. 7: removing channel ``c``
    (every parameter ``s`` it owns: its filter, bias, BatchNorm scale and shift, next layers' inputs)
    changes the loss by about :math:`\sum_s g_s w_s`; the square, averaged over batches. ``gradient_weight``
    is ``(B, channels)``: that inner sum for each batch ``b``.
    """
    return gradient_weight.pow(2).mean(0)


def hessian(weight: torch.Tensor, hessian_diag: torch.Tensor) -> torch.Tensor:
    r"""Optimal Brain Damage saliency: :math:`s_k = \tfrac{1}{2}\, h_{kk}\, w_k^2`.

    LeCun, Denker & Solla 1990, "Optimal Brain Damage": at a minimum the loss grows by
    :math:`\tfrac{1}{2} h_{kk} w_k^2` when :math:`w_k` is set to zero, the other weights left as they are
    (diagonal Hessian, cross terms ignored). ``hessian_diag`` is :math:`h_{kk}` of the training loss,
    estimated on the calibration samples (the first ``calibration_samples`` of ``data``) by the empirical
    Fisher (the default, :math:`h_{kk} \approx \frac{1}{N}\sum_n (\partial L_n / \partial w_k)^2`, per-sample
    gradients squared: a stand-in for the Hessian near a minimum, never negative) or, with
    ``hessian_estimator="hutchinson"``, by Hutchinson's estimator
    :math:`\mathrm{diag}(H) \approx \mathbb{E}_z[z \odot Hz]`, :math:`z` Rademacher (exact in expectation, noisy
    with few probes). `obs` uses the full layer Hessian instead. A channel (structured) sums the terms of the
    weights that read it (``reads``).
    """
    return 0.5 * hessian_diag * weight.pow(2)


def _hessian_diag(ctx: Context) -> dict[str, tuple]:
    """The Hessian diagonal by the context's estimator: the empirical Fisher, or Hutchinson's."""
    if ctx.hessian_estimator == "fisher":
        return ctx.with_weights(estimate.fisher_diagonal(ctx.model, ctx.data, samples=ctx.samples))  # type: ignore
    return ctx.with_weights(estimate.hutchinson_diagonal(ctx.model, ctx.data, seed=ctx.seed,  # type: ignore[arg-type]
                                                         samples=ctx.samples))


GRAD_SQ = Statistic(name="grad_sq", needs_data=True, gradients=True, estimate=lambda ctx: ctx.with_weights(
    estimate.squared_gradients(ctx.model, ctx.data, samples=ctx.samples)))  # type: ignore[arg-type]
GROUP_GRADIENT_WEIGHT = Statistic(name="group_gradient_weight", needs_data=True, gradients=True, estimate=lambda ctx: {
    root: (v,) for root, v in estimate.group_gradient_weight(ctx.model, ctx.data, ctx.groups,  # type: ignore[arg-type]
                                                             samples=ctx.samples).items()})
HESSIAN_DIAG = Statistic(name="hessian_diag", needs_data=True, gradients=True, estimate=_hessian_diag)

register(Criterion(name="taylor", formula=taylor, statistic=GRAD_SQ, label="Taylor", colour="tab:orange",
                   layerwise=True))
register(Criterion(name="taylor_group", formula=taylor_group, statistic=GROUP_GRADIENT_WEIGHT, unstructured=False,
                   label="group Taylor", colour="tab:brown", channel=True))
register(Criterion(name="hessian", formula=hessian, statistic=HESSIAN_DIAG, label="Hessian (OBD)", colour="tab:green",
                   layerwise=True, reads=True, raw_when_gradual=True))
