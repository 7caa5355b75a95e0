"""Channel criteria from what the next layers read: ThiNet's greedy selection by the consumers' refit error
(group OBS), and Minitron's activation norms."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdnb.engine.batches import call_example
from kdnb.engine.device import eval_mode, model_device, to_device
from kdnb.engine.prune.graph.groups import BATCHNORM, PRUNABLE, ChannelGroup, Slice
from kdnb.engine.prune.score import calibration, stream
from kdnb.engine.prune.score.linalg import inverse_factor
from kdnb.engine.prune.score.registry import Context, Criterion, Statistic, register


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


def _consumer_columns(group: ChannelGroup, module: nn.Module, slice_: Any) -> torch.Tensor | None:
    """``(channels, b)``: the input columns (im2col order for a conv) each channel of ``group`` feeds; for a
    `calibration.grouped` conv, inside one conv-group (a channel's weights sit at the same position of every
    conv-group's rows, so it feeds those columns of each)."""
    kernel = module.weight[0, 0].numel() if module.weight.dim() > 2 else 1
    per = [slice_.index[slice_.channel == c] for c in range(group.size)]
    if calibration.grouped(module):
        per = [torch.unique(p) for p in per]
    if len({len(p) for p in per}) != 1:
        return None
    positions = torch.stack(per)  # (channels, positions per channel)
    return (positions[:, :, None] * kernel + torch.arange(kernel)).reshape(group.size, -1)


def _consumer_rows(ctx: Context, name: str, module: nn.Module, gram: torch.Tensor
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A consumer's input Gram matrices and weight rows (out, d), paired per conv-group (one pair for an ungrouped
    layer): fp64, its bias as the last column (the Gram's ones column dropped when it has none), its BatchNorm
    folded in (`_normalised_rows`)."""
    gram = gram if module.bias is not None else gram[..., :-1, :-1]
    weight = module.weight.detach().double().reshape(module.weight.shape[0], -1).cpu()
    if module.bias is not None:
        weight = torch.cat([weight, module.bias.detach().double().cpu()[:, None]], 1)
    weight = _normalised_rows(ctx, name, weight)
    return (list(gram), list(weight.chunk(len(gram)))) if gram.dim() == 3 else ([gram], [weight])


def _consumer_blocks(ctx: Context, name: str, module: nn.Module, gram: torch.Tensor, cols: torch.Tensor
                     ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One consumer's (weight (out, d) with its BatchNorm folded in, H^-1 (d, d), columns), the bias last when it
    has one; a `calibration.grouped` conv's is one block per conv-group: its rows, its own inputs' H^-1."""
    grams, weights = _consumer_rows(ctx, name, module, gram)
    return [(w, torch.cholesky_inverse(torch.linalg.cholesky(calibration.damped_hessian(g))).cpu(), cols)
            for w, g in zip(weights, grams)]


def _normalised_rows(ctx: Context, layer: str, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out, d) with the BatchNorm that normalises ``layer``'s outputs folded in (rows times
    gamma / sqrt(var + eps)): errors are then measured in what the next layers read."""
    group = next((g for g in ctx.groups if g.root == layer and g.size == weight.shape[0]), None)  # a unit a row
    if group is None and calibration.grouped(ctx.model.get_submodule(layer)):
        return _normalised_grouped_rows(ctx, layer, weight)
    norms = _batchnorm_scales(ctx, group.slices if group else [])
    if len(norms) != 1:  # none, or one per reader (DenseNet) or per residual branch: no single scale
        return weight
    s, factor = norms[0]
    per_unit = torch.ones(group.size, dtype=weight.dtype)
    per_unit[s.channel] = factor[s.index]
    units = group.units if group.units is not None else torch.arange(group.size)  # root row -> its unit
    return weight * per_unit[units][:, None]


def _normalised_grouped_rows(ctx: Context, layer: str, weight: torch.Tensor) -> torch.Tensor:
    """`_normalised_rows` of a grouped conv, whose rows share units (one position of every conv-group): each row
    times its own BatchNorm channel's scale, where the BatchNorm reads the rows in their order."""
    group = next((g for g in ctx.groups if g.root == layer), None)
    slices = group.slices if group else []
    root = next((s for s in slices if s.param == f"{layer}.weight" and s.dim == 0), None)
    norms = _batchnorm_scales(ctx, slices)
    if root is None or len(norms) != 1 or not torch.equal(norms[0][0].index, root.index):
        return weight
    s, factor = norms[0]
    per_row = torch.ones(len(weight), dtype=weight.dtype)
    per_row[root.index] = factor[s.index]
    return weight * per_row[:, None]


def _batchnorm_scales(ctx: Context, slices: list) -> list[tuple[Slice, torch.Tensor]]:
    r"""Each tracking BatchNorm among ``slices`` with its per-channel scale :math:`|\gamma| / \sqrt{var + eps}`."""
    norms = [(s, ctx.model.get_submodule(s.param.rpartition(".")[0])) for s in slices
             if s.dim == 0 and s.param.endswith("weight")]
    return [(s, ((m.running_var.double() + m.eps).rsqrt() * m.weight.detach().double().abs()).cpu())
            for s, m in norms if isinstance(m, BATCHNORM) and m.track_running_stats]


def _consumers(ctx: Context) -> dict[str, tuple]:
    """For each group, every Linear/Conv consuming its channels: (weight (out, d) with its BatchNorm folded in,
    H^-1 (d, d), columns); a consumer with a bias gets the ones column too (its bias last, ``d+1``): the refit
    re-solves the bias, which absorbs the mean of what a removed channel fed. A grouped conv is ``groups``
    consumers, one per conv-group, as the refit solves it (`_consumer_blocks`). A group too large for ThiNet's
    greedy (`greedy_fits`) gets instead each channel's one-shot group-OBS cost summed over its consumers
    (`group_obs`), taken as each layer's Gram matrix passes (`stream.each_gram`), so that only the small
    groups' inverse Hessians are held."""
    readers: dict[str, list[tuple[ChannelGroup, Slice]]] = {}
    for group in ctx.groups:
        for s in group.slices:
            if s.dim == 1 and s.param.endswith("weight"):
                readers.setdefault(s.param, []).append((group, s))
    greedy = {group.root: greedy_fits(group.size, [_width(ctx.model, s.param) for s in group.slices
                                                            if s.dim == 1 and s.param in readers])
              for group in ctx.groups}
    blocks: dict[str, list] = {}
    costs: dict[str, torch.Tensor] = {}
    for param, gram in stream.each_gram(ctx.model, ctx.data, ctx.samples, ones=True, groups=True,  # type: ignore
                                        progress=ctx.progress):
        name = param.rpartition(".")[0]
        module = ctx.model.get_submodule(name)
        for group, s in readers.get(param, []):
            cols = _consumer_columns(group, module, s)
            if cols is None:
                continue
            if greedy[group.root]:
                blocks.setdefault(group.root, []).extend(_consumer_blocks(ctx, name, module, gram, cols))
            else:
                cost = sum(group_obs(w, u, cols) for w, u in _consumer_factors(ctx, name, module, gram))
                costs[group.root] = costs.get(group.root, 0) + cost
    return {**{root: (found,) for root, found in blocks.items()}, **{root: ([], cost) for root, cost in costs.items()}}


def _width(model: nn.Module, param: str) -> int:
    """Inputs (plus the ones column) of the layer owning ``param``, per conv-group."""
    return model.get_parameter(param)[0].numel() + 1


def _consumer_factors(ctx: Context, name: str, module: nn.Module, gram: torch.Tensor
                      ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`_consumer_blocks` for `group_obs`: (weight, upper factor of H^-1) per conv-group, fp32 factors
    (`linalg.inverse_factor`: ``2 d^3 / 3``, where the inverse costs ``d^3``)."""
    grams, weights = _consumer_rows(ctx, name, module, gram)
    return [(w, inverse_factor(g, calibration.DAMP).cpu()) for w, g in zip(weights, grams)]


def _as_tokens(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """A layer's input as (samples, tokens, features): a Linear's middle dims are tokens, an ungrouped conv's
    positions are; None for the layers whose inputs are not whole channels (grouped convs)."""
    if isinstance(module, nn.Linear):
        return x.reshape(x.shape[0], -1, x.shape[-1])
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups == 1:
        return x.flatten(2).transpose(1, 2)
    return None


@torch.no_grad()
def _consumer_activations(ctx: Context) -> dict[str, tuple]:
    """For each group, a list with one ``(samples, tokens, units)`` tensor per Linear/Conv consuming it: the L2
    norm over each unit's channels of what that layer reads from it, on the calibration samples."""
    readers: dict[nn.Module, list[tuple[ChannelGroup, Slice]]] = {}
    for group in ctx.groups:
        for s in group.slices:
            module = ctx.model.get_submodule(s.param.rpartition(".")[0])
            if s.consumer and s.dim == 1 and s.param.endswith("weight") and isinstance(module, PRUNABLE):
                readers.setdefault(module, []).append((group, s))
    norms: dict[tuple[str, str], list[torch.Tensor]] = {}

    def record(module: nn.Module, args: tuple) -> None:
        features = _as_tokens(module, args[0].detach())
        if features is None:
            return
        squares = features.double().cpu().pow(2)
        for group, s in readers[module]:
            per_unit = torch.zeros(*squares.shape[:2], group.size, dtype=torch.float64)
            per_unit.index_add_(2, s.channel, squares[..., s.index])
            norms.setdefault((group.root, s.param), []).append(per_unit.sqrt())

    hooks = [module.register_forward_pre_hook(record) for module in readers]
    try:
        with eval_mode(ctx.model):
            for x in calibration.calibration_batches(ctx.data, ctx.samples):  # type: ignore[arg-type]
                call_example(ctx.model, to_device(x, model_device(ctx.model)))
    finally:
        for hook in hooks:
            hook.remove()
    found: dict[str, list[torch.Tensor]] = {}
    for (root, _), batches in norms.items():
        found.setdefault(root, []).append(torch.cat(batches))
    return {root: (consumers,) for root, consumers in found.items()}


CONSUMER_INVERSE_HESSIAN = Statistic(name="consumer_inverse_hessian", needs_data=True, estimate=_consumers)
CONSUMER_ACTIVATION = Statistic(name="consumer_activation", needs_data=True, estimate=_consumer_activations)

register(Criterion(name="thinet", formula=thinet, statistic=CONSUMER_INVERSE_HESSIAN, unstructured=False,
                   label="ThiNet (group OBS)", colour="tab:red", channel=True))
register(Criterion(name="activation", formula=activation, statistic=CONSUMER_ACTIVATION, unstructured=False,
                   label="activation (Minitron)", colour="tab:green", channel=True, normalise=True))
