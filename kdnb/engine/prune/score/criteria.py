"""Importance criteria: how much each weight (or channel) matters. Low score = pruned first.

The registry: a criterion is one formula function below plus one `Criterion` record in `REGISTRY`
(its name, formula, the statistic it needs, whether that needs data, the modes it supports, label,
colour). `kdnb.prune`, `importance`, the checks, the sparsity explorer and the magics' help all read
`REGISTRY`; adding a criterion is one function and one record here. The statistics themselves are
estimated by `kdnb.engine.prune.score.importance.STATISTICS` (batch gradients, Hessian diagonals, layer inputs).

Element criteria score every element of a parameter tensor; structured pruning adds a channel's element
scores over every slice it owns (`kdnb.engine.prune.graph.groups`), or over the weights that read it only for the
criteria marked ``reads``. Channel criteria (``channel=True``) score
whole channels from a channel-level statistic.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def l1(weight: torch.Tensor) -> torch.Tensor:
    r"""Magnitude: :math:`s_k = |w_k|`.

    Han et al. 2015, "Learning both Weights and Connections for Efficient Neural Networks";
    summed over a channel it is the L1 norm of Li et al. 2017, "Pruning Filters for Efficient ConvNets".
    """
    return weight.abs()


def lamp(weight: torch.Tensor) -> torch.Tensor:
    r"""Layer-adaptive magnitude (LAMP): with the layer's weights sorted so that :math:`|w_1| \le \dots \le |w_n|`,
    :math:`s_u = w_u^2 / \sum_{v \ge u} w_v^2`.

    Lee et al. 2021, "Layer-adaptive Sparsity for the Magnitude-based Pruning": the same order as magnitude
    inside a layer, but comparable across layers, so one global threshold sets every layer's sparsity; each
    layer's largest weight scores 1, the maximum, so a global threshold below 1 never empties a layer.
    """
    return lamp_normalise(weight.detach().pow(2))


def lamp_normalise(scores: torch.Tensor) -> torch.Tensor:
    r"""LAMP's normaliser of non-negative scores of one layer: :math:`s_u / \sum_{v:\, s_v \ge s_u} s_v` (ties in
    a fixed order). Criteria marked ``layerwise`` rank globally by it (their scores are errors of one layer)."""
    flat = scores.detach().double().flatten().clamp_min(0)
    order = torch.argsort(flat, stable=True)
    ascending = flat[order]
    tail = ascending.flip(0).cumsum(0).flip(0)  # sum over v >= u
    result = torch.empty_like(flat)
    result[order] = ascending / tail.clamp_min(torch.finfo(torch.float64).tiny)
    return result.view_as(scores).to(scores.dtype)


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


def thinet(consumers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], costs: torch.Tensor | None = None
           ) -> torch.Tensor:
    r"""Greedy channel selection by the next layers' reconstruction error, each removal by group OBS.

    ThiNet (Luo et al. 2017) removes, one at a time, the channel whose removal least increases the error of
    the layers that consume it, refitting them by least squares (He et al. 2017). With the consumer's input
    Hessian :math:`H = 2X^\top X` the increase and the refit are OBS's closed form for a block ``B`` of input
    columns (Hassibi & Stork 1993; Frantar & Alistarh 2022):
    :math:`\Delta E_B = \tfrac12 \sum_r W_{rB} [H^{-1}]_{BB}^{-1} W_{rB}^\top`,
    :math:`W \leftarrow W - W_{:B} [H^{-1}]_{BB}^{-1} [H^{-1}]_{B:}`,
    :math:`H^{-1} \leftarrow H^{-1} - [H^{-1}]_{:B} [H^{-1}]_{BB}^{-1} [H^{-1}]_{B:}`.
    ``consumers``: for each consuming layer, its weight ``(out, d)`` (with the BatchNorm that normalises its
    outputs folded in, so the error is the one the next layers read), :math:`H^{-1}` ``(d, d)`` and each
    channel's ``b`` input columns ``(channels, b)`` (a grouped conv is one consumer per conv-group: its rows, the
    :math:`H^{-1}` of its own inputs, the columns each channel feeds inside it, as the refit solves each conv-group
    alone); a consumer with a bias has it as a last column of the weight
    and ``X``'s column of ones in ``H`` (``d+1``, never removed): the refit re-solves the bias, which absorbs
    the mean of what a removed channel fed. Score = the error accumulated when the channel goes, over the error
    of removing all but the last (which scores 2): comparable across layers, the removal order inside one.

    Cost: ``count`` steps, each updating every consumer's ``d x d`` inverse Hessian by a rank-``b`` product:
    ``O(count d^2 b)`` = ``O(d^3)`` for a consumer that reads only this layer, but ``count`` passes over ``d^2``
    numbers (memory-bound: minutes on a ResNet's last stage). So only where `greedy_fits`; elsewhere ``costs``, each
    channel's one-shot group-OBS cost summed over the consumers (`group_obs`), scored as the greedy would score
    that removal order (cumulative cost over the total): ``O(count log count)``.
    """
    if costs is not None:
        return _cumulative(costs)
    count = consumers[0][2].shape[0]
    alive = torch.ones(count, dtype=torch.bool)
    scores = torch.zeros(count, dtype=torch.float64)
    consumers = [(w.clone(), h.clone(), cols) for w, h, cols in consumers]
    total = 0.0
    for _ in range(count - 1):
        cost = torch.zeros(count, dtype=torch.float64)
        for weight, inverse, cols in consumers:
            rows = weight[:, cols].permute(1, 2, 0)  # (channels, b, out)
            if cols.shape[1] == 1:  # one column a channel: the block is a number
                cost += 0.5 * rows.pow(2).sum((1, 2)) / inverse.diagonal()[cols[:, 0]].masked_fill(~alive, 1.0)
                continue
            blocks = inverse[cols[:, :, None], cols[:, None, :]]  # (channels, b, b)
            blocks[~alive] = torch.eye(cols.shape[1], dtype=blocks.dtype)
            cost += 0.5 * (rows * torch.linalg.solve(blocks, rows)).sum((1, 2))
        cost[~alive] = float("inf")
        chosen = int(cost.argmin())
        total += float(cost[chosen])
        scores[chosen], alive[chosen] = total, False
        for weight, inverse, cols in consumers:
            b = cols[chosen]
            step = torch.linalg.solve(inverse[b][:, b], inverse[b, :])  # [H^-1]_BB^-1 [H^-1]_B:
            weight -= weight[:, b] @ step
            inverse -= inverse[:, b] @ step
    return torch.where(alive, 2.0, scores / max(total, torch.finfo(torch.float64).tiny))


GREEDY_NUMBERS = 2**26  # count x sum of the consumers' d^2 up to which `thinet` runs greedily (~0.5 GB of traffic)


def greedy_fits(count: int, widths: list[int]) -> bool:
    """Whether ThiNet's greedy over ``count`` channels read by consumers of ``widths`` inputs stays cheap."""
    return count * sum(d * d for d in widths) <= GREEDY_NUMBERS


def group_obs(weight: torch.Tensor, upper: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    r"""One-shot group-OBS cost of removing each channel alone from one consumer:
    :math:`\Delta E_c = 	frac12 \sum_r W_{rB_c} [H^{-1}]_{B_cB_c}^{-1} W_{rB_c}^	op` (Hassibi & Stork 1993; the
    first step of `thinet`'s greedy), with :math:`H^{-1} = U^	op U` (``upper``: `linalg.inverse_factor`) so that
    each ``b x b`` block is :math:`U_{:B}^	op U_{:B}`. ``weight`` (out, d), ``cols`` (channels, b). Cost:
    ``d b^2`` per channel for the blocks plus ``out b^2``: ``O(d^2 b + out d b)`` for a consumer that reads only
    this layer.
    """
    u = upper[:, cols].permute(1, 0, 2).double()  # (channels, d, b)
    blocks = u.transpose(1, 2) @ u  # (channels, b, b): [H^-1]_BB
    rows = weight[:, cols].permute(1, 2, 0).double()  # (channels, b, out)
    return 0.5 * (rows * torch.linalg.solve(blocks, rows)).sum((1, 2))


def _cumulative(costs: torch.Tensor) -> torch.Tensor:
    """Scores of channels removed in ascending ``costs``: the cost accumulated up to each one over that of removing
    all but the costliest, which scores 2 (as `thinet` scores its greedy order)."""
    order = torch.argsort(costs.double(), stable=True)
    running = torch.cumsum(costs.double()[order], 0)
    total = max(float(running[-2]) if len(costs) > 1 else 0.0, torch.finfo(torch.float64).tiny)
    scores = torch.empty(len(costs), dtype=torch.float64)
    scores[order] = running / total
    scores[order[-1]] = 2.0
    return scores


def activation(unit_norms: list[torch.Tensor]) -> torch.Tensor:
    r"""Activation importance (Minitron): :math:`s_u = \sum_k \big(\sum_n \big(\frac{1}{T}\sum_t
    \lVert x^{(k)}_{n,t,u} \rVert_2\big)^2\big)^{1/2}`.

    Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge Distillation" (Minitron):
    a unit (an attention head, an MLP neuron, an embedding channel) matters as much as the activation it hands
    on. :math:`x^{(k)}_{n,t,u}` is what consuming layer ``k`` reads from unit ``u`` for sample ``n`` at token
    ``t`` (a head: its attention output, the columns of the output projection it feeds; an embedding channel:
    every LayerNorm output that a later Linear reads; an MLP neuron: what the next Linear reads, its value after
    the activation function, where the paper takes :math:`X W_1^{i\top}` just before it); the L2 norm is over the
    unit's channels, then the paper's best aggregation for width (its best practice 2, Table 11: batch L2,
    sequence mean); summed over the consumers. ``unit_norms`` holds, for each consumer ``k``,
    :math:`\lVert x^{(k)}_{n,t,u} \rVert_2` shaped ``(samples, tokens, units)``; forward passes only, no
    gradients.
    """
    return sum(norms.mean(1).pow(2).sum(0).sqrt() for norms in unit_norms)  # type: ignore[return-value]


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
    return torch.rand(weight.shape, generator=generator, dtype=weight.dtype).to(weight.device)


@dataclass(frozen=True)
class Criterion:
    """One criterion of the registry.

    Attributes:
        name: what users pass as ``criterion=``.
        formula: the score function above, called as ``formula(weight, statistic)`` (or ``formula(weight)``).
        statistic: what the formula needs besides the weight (a key of `importance.STATISTICS`), or None.
        needs_data: the statistic is estimated on batches of ``data``.
        unstructured, structured: the modes it can score (single weights, whole channels).
        label, colour: how plots and widgets show it.
        channel: structured, the formula scores channels directly (from a channel-level statistic: random draws
            one number per channel), not their elements.
        per_row: with ``scope="local"``, weights compete within each output row (Wanda), not the whole layer.
        normalise: structured global ranking divides a layer's channel scores by their mean first (magnitudes
            of different layers are not comparable).
        layerwise: the scores are not comparable across layers (one layer's output error for obs/wanda; loss
            estimates whose scale varies by orders of magnitude between layers for taylor/hessian, so that a raw
            global threshold empties layers: bench/prune_oneshot.py); unstructured global ranking uses their
            `lamp_normalise` form, which cannot empty a layer either.
        reselect: with reconstruction, each layer's mask is re-chosen at the sparsity the scores gave it, by
            SparseGPT's OBS sweep on the already-pruned inputs (`kdnb.engine.prune.rebuild.reconstruct.sparsegpt`).
        reads: structured, a channel's score sums the element scores of the weights that *read* it only (the
            next layers' input columns), not of those that produce it (its filter, bias, BatchNorm): removing a
            channel is exactly zeroing what reads it, whatever produced it. For wanda this is Wanda-sp (An et al.
            2024). Set where reading weights beat the whole group in bench/prune_oneshot.py (obs, wanda, hessian on
            the notebook-02 teacher; obs on cnn_bn); taylor keeps its whole group.
        raw_when_gradual: ``layerwise`` only for a one-shot cut; a gradual schedule ("iterative", "agp") ranks the
            raw scores globally: they estimate one loss, and with fine-tuning between the steps their uneven
            allocation across layers wins (hessian to 98 % on LeNet-300-100, agp and iterative:
            bench/prune_sparsity.py).
    """

    name: str
    formula: Callable[..., torch.Tensor]
    statistic: str | None
    needs_data: bool
    unstructured: bool
    structured: bool
    label: str
    colour: str
    channel: bool = False
    per_row: bool = False
    normalise: bool = False
    layerwise: bool = False
    reselect: bool = False
    reads: bool = False
    raw_when_gradual: bool = False


REGISTRY: dict[str, Criterion] = {c.name: c for c in (
    Criterion("l1", l1, None, False, True, True, "L1 magnitude", "tab:blue", normalise=True),
    Criterion("lamp", lamp, None, False, True, True, "LAMP", "tab:cyan"),
    Criterion("taylor", taylor, "grad_sq", True, True, True, "Taylor", "tab:orange", layerwise=True),
    Criterion("taylor_group", taylor_group, "group_gradient_weight", True, False, True, "group Taylor",
              "tab:brown", channel=True),
    Criterion("hessian", hessian, "hessian_diag", True, True, True, "Hessian (OBD)", "tab:green", layerwise=True,
              reads=True, raw_when_gradual=True),
    Criterion("obs", obs, "inverse_hessian_diag", True, True, True, "OBS", "tab:olive", layerwise=True,
              reselect=True, reads=True),
    Criterion("wanda", wanda, "input_norm", True, True, True, "Wanda", "tab:pink", per_row=True, layerwise=True,
              reads=True),
    Criterion("thinet", thinet, "consumer_inverse_hessian", True, False, True, "ThiNet (group OBS)", "tab:red",
              channel=True),
    Criterion("activation", activation, "consumer_activation", True, False, True, "activation (Minitron)",
              "tab:green", channel=True, normalise=True),
    Criterion("slimming", slimming, "batchnorm_scale", True, False, True, "network slimming", "tab:purple"),
    Criterion("random", random, "generator", False, True, True, "random", "tab:gray", channel=True),
)}


def names(structured: bool | None = None) -> tuple[str, ...]:
    """The registered criteria (that support single weights when ``structured=False``, channels when True)."""
    return tuple(name for name, c in REGISTRY.items()
                 if structured is None or (c.structured if structured else c.unstructured))


CRITERIA = names()  # kept for the imports that name the tuple
