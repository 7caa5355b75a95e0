"""`importance` computes a criterion's scores of a model once (the costly part, with data); `masks_at`
(`kdnb.engine.prune.select.masks`) then masks at any sparsity cheaply. The criteria and what each needs come from
the registry, `kdnb.engine.prune.score.criteria.REGISTRY`; the statistics they read are `STATISTICS`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from kdnb.errors import KdnbError, suggest
from kdnb.engine import distributed
from kdnb.engine.checks import first_batch
from kdnb.engine.device import eval_mode, model_device, resolve_device, to_device
from kdnb.engine.objective import split_batch
from kdnb.engine.prune import arguments
from kdnb.engine.prune.cut.masks import clone, make_permanent
from kdnb.engine.prune.graph.groups import (BATCHNORM, PRUNABLE, ChannelGroup, Slice, channel_groups, channel_scores,
                                            dependency_graph, prunable_weights)
from kdnb.engine.prune.phases import Phases, silent
from kdnb.engine.prune.score import calibration, criteria, estimate, stream
from kdnb.engine.prune.score.linalg import inverse_factor
from kdnb.engine.prune.score.estimate import ESTIMATORS
from kdnb.engine.prune.score.scores import Scores


def check_criterion(criterion: str, data: Iterable | None, model: nn.Module, structured: bool,
                    hessian_estimator: str = "fisher") -> criteria.Criterion:
    """The registry record of ``criterion``, after checking it fits the mode and the inputs."""
    record = criteria.REGISTRY.get(criterion) if isinstance(criterion, str) else None
    if record is None:
        raise KdnbError(f"unknown criterion {criterion!r}; {suggest(str(criterion), criteria.names())} "
                        f"(known: {', '.join(criteria.names())})")
    if hessian_estimator not in ESTIMATORS:
        raise KdnbError(f"unknown hessian_estimator {hessian_estimator!r}; "
                        f"{suggest(str(hessian_estimator), ESTIMATORS)}")
    if record.needs_data and data is None:
        raise KdnbError(f"criterion {criterion!r} needs data to score with: pass data=train_loader "
                        "(or use criterion='l1')")
    if record.statistic == "batchnorm_scale" and not any(isinstance(m, BATCHNORM) and m.affine
                                                          for m in model.modules()):
        raise KdnbError(f"criterion {criterion!r} prunes by BatchNorm scales but the model has no BatchNorm "
                        "layer; use criterion='l1', 'taylor' or 'hessian'")
    if not (record.structured if structured else record.unstructured):
        if structured:
            raise KdnbError(f"criterion {criterion!r} scores single weights; use structured=False "
                            f"(or one of {', '.join(criteria.names(structured=True))})")
        raise KdnbError(f"criterion {criterion!r} scores whole channels; use structured=True "
                        f"(or another criterion for single weights: {', '.join(criteria.names(structured=False))})")
    return record


@dataclass
class _Context:
    """What a statistic may read: the model, the data (its first ``samples`` samples), the mode, the seed."""

    model: nn.Module
    data: Iterable | None
    structured: bool
    seed: int
    hessian_estimator: str
    groups: list[ChannelGroup]
    samples: int = calibration.SAMPLES
    progress: Callable[[int, int], None] | None = None  # (layers done, layers) as a calibration pass moves on

    def scored(self) -> dict[str, torch.Tensor]:
        """The parameters an element criterion scores: every one when structured (BatchNorm included)."""
        params = dict(self.model.named_parameters(remove_duplicate=False))  # a tied weight under each name
        return {n: p.detach() for n, p in params.items()} if self.structured else \
            {n: params[n].detach() for n in prunable_weights(self.model)}


def _with(ctx: _Context, stats: dict[str, torch.Tensor]) -> dict[str, tuple]:
    return {n: (w, stats[n]) for n, w in ctx.scored().items() if n in stats}


def _hessian_diag(ctx: _Context) -> dict[str, tuple]:
    if ctx.hessian_estimator == "fisher":
        return _with(ctx, estimate.fisher_diagonal(ctx.model, ctx.data, samples=ctx.samples))  # type: ignore[arg-type]
    return _with(ctx, estimate.hutchinson_diagonal(ctx.model, ctx.data, seed=ctx.seed,  # type: ignore[arg-type]
                                                   samples=ctx.samples))


def _per_input(ctx: _Context, of_gram: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, tuple]:
    """A statistic of each layer's input Gram matrix ``X^T X``, one value per input, shaped as the weight; one
    layer's Gram matrix held at a time (`stream.each_gram`)."""
    weights = prunable_weights(ctx.model)
    # a weight tied under two names is scored once, under its first (`prunable_weights`), by that layer's inputs
    return {n: (weights[n].detach(), of_gram(g).to(weights[n]).view(1, *weights[n].shape[1:]))
            for n, g in stream.each_gram(ctx.model, ctx.data, ctx.samples, progress=ctx.progress)  # type: ignore
            if n in weights}


def _damped_hessian(gram: torch.Tensor) -> torch.Tensor:
    """H = 2 (X^T X + damp I), damped as the reconstruction is (so it is invertible)."""
    scale = float(gram.diagonal().mean()) or 1.0
    return 2 * (gram + calibration.DAMP * scale * torch.eye(len(gram), dtype=gram.dtype, device=gram.device))


def _inverse_hessian_diag(gram: torch.Tensor) -> torch.Tensor:
    """diag of H^-1, H = 2 (X^T X + damp I)."""
    return torch.cholesky_inverse(torch.linalg.cholesky(_damped_hessian(gram))).diagonal()


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


def _consumer_blocks(ctx: _Context, name: str, module: nn.Module, gram: torch.Tensor, cols: torch.Tensor
                     ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One consumer's (weight (out, d) with its BatchNorm folded in, H^-1 (d, d), columns), the bias last when it
    has one; a `calibration.grouped` conv's is one block per conv-group: its rows, its own inputs' H^-1."""
    gram = gram if module.bias is not None else gram[..., :-1, :-1]
    weight = module.weight.detach().double().reshape(module.weight.shape[0], -1).cpu()
    if module.bias is not None:
        weight = torch.cat([weight, module.bias.detach().double().cpu()[:, None]], 1)
    weight = _normalised_rows(ctx, name, weight)
    grams, weights = (gram, weight.chunk(len(gram))) if gram.dim() == 3 else ([gram], [weight])
    return [(w, torch.cholesky_inverse(torch.linalg.cholesky(_damped_hessian(g))).cpu(), cols)
            for w, g in zip(weights, grams)]


def _normalised_rows(ctx: _Context, layer: str, weight: torch.Tensor) -> torch.Tensor:
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


def _normalised_grouped_rows(ctx: _Context, layer: str, weight: torch.Tensor) -> torch.Tensor:
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


def _batchnorm_scales(ctx: _Context, slices: list) -> list[tuple[Slice, torch.Tensor]]:
    r"""Each tracking BatchNorm among ``slices`` with its per-channel scale :math:`|\gamma| / \sqrt{var + eps}`."""
    norms = [(s, ctx.model.get_submodule(s.param.rpartition(".")[0])) for s in slices
             if s.dim == 0 and s.param.endswith("weight")]
    return [(s, ((m.running_var.double() + m.eps).rsqrt() * m.weight.detach().double().abs()).cpu())
            for s, m in norms if isinstance(m, BATCHNORM) and m.track_running_stats]


def _consumers(ctx: _Context) -> dict[str, tuple]:
    """For each group, every Linear/Conv consuming its channels: (weight (out, d) with its BatchNorm folded in,
    H^-1 (d, d), columns); a consumer with a bias gets the ones column too (its bias last, ``d+1``): the refit
    re-solves the bias, which absorbs the mean of what a removed channel fed. A grouped conv is ``groups``
    consumers, one per conv-group, as the refit solves it (`_consumer_blocks`). A group too large for ThiNet's
    greedy (`criteria.greedy_fits`) gets instead each channel's one-shot group-OBS cost summed over its consumers
    (`criteria.group_obs`), taken as each layer's Gram matrix passes (`stream.each_gram`), so that only the small
    groups' inverse Hessians are held."""
    readers: dict[str, list[tuple[ChannelGroup, Slice]]] = {}
    for group in ctx.groups:
        for s in group.slices:
            if s.dim == 1 and s.param.endswith("weight"):
                readers.setdefault(s.param, []).append((group, s))
    greedy = {group.root: criteria.greedy_fits(group.size, [_width(ctx.model, s.param) for s in group.slices
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
                cost = sum(criteria.group_obs(w, u, cols) for w, u in _consumer_factors(ctx, name, module, gram))
                costs[group.root] = costs.get(group.root, 0) + cost
    return {**{root: (found,) for root, found in blocks.items()}, **{root: ([], cost) for root, cost in costs.items()}}


def _width(model: nn.Module, param: str) -> int:
    """Inputs (plus the ones column) of the layer owning ``param``, per conv-group."""
    return model.get_parameter(param)[0].numel() + 1


def _consumer_factors(ctx: _Context, name: str, module: nn.Module, gram: torch.Tensor
                      ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`_consumer_blocks` for `criteria.group_obs`: (weight, upper factor of H^-1) per conv-group, fp32 factors
    (`linalg.inverse_factor`: ``2 d^3 / 3``, where the inverse costs ``d^3``)."""
    gram = gram if module.bias is not None else gram[..., :-1, :-1]
    weight = module.weight.detach().double().reshape(module.weight.shape[0], -1).cpu()
    if module.bias is not None:
        weight = torch.cat([weight, module.bias.detach().double().cpu()[:, None]], 1)
    weight = _normalised_rows(ctx, name, weight)
    grams, weights = (gram, weight.chunk(len(gram))) if gram.dim() == 3 else ([gram], [weight])
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
def _consumer_activations(ctx: _Context) -> dict[str, tuple]:
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
                ctx.model(to_device(x, model_device(ctx.model)))
    finally:
        for hook in hooks:
            hook.remove()
    found: dict[str, list[torch.Tensor]] = {}
    for (root, _), batches in norms.items():
        found.setdefault(root, []).append(torch.cat(batches))
    return {root: (consumers,) for root, consumers in found.items()}


def _generator(ctx: _Context) -> dict[str, tuple]:
    generator = torch.Generator()  # its own: the user's global RNG is never drawn from
    generator.manual_seed(ctx.seed) if ctx.seed is not None else generator.seed()  # seed=None: unseeded
    if ctx.structured:  # one draw per channel
        return {g.root: (torch.zeros(g.size, dtype=torch.float64), generator) for g in ctx.groups}
    return {n: (w, generator) for n, w in ctx.scored().items()}


STATISTICS: dict[str | None, Callable[[_Context], dict[str, tuple]]] = {
    None: lambda ctx: {n: (w,) for n, w in ctx.scored().items()},
    "grad_sq": lambda ctx: _with(ctx, estimate.squared_gradients(ctx.model, ctx.data,  # type: ignore[arg-type]
                                                                 samples=ctx.samples)),
    "hessian_diag": _hessian_diag,
    "input_norm": lambda ctx: _per_input(ctx, lambda g: g.diagonal().clamp_min(0).sqrt()),
    "inverse_hessian_diag": lambda ctx: _per_input(ctx, _inverse_hessian_diag),
    "batchnorm_scale": lambda ctx: {f"{n}.weight" if n else "weight": (m.weight.detach(),)
                                    for n, m in ctx.model.named_modules() if isinstance(m, BATCHNORM) and m.affine},
    "generator": _generator,
    "consumer_inverse_hessian": _consumers,
    "consumer_activation": _consumer_activations,
    "group_gradient_weight": lambda ctx: {root: (v,) for root, v in estimate.group_gradient_weight(
        ctx.model, ctx.data, ctx.groups, samples=ctx.samples).items()},  # type: ignore[arg-type]
}


def importance(model: nn.Module, criterion: str = "l1", data: Iterable | None = None, *, structured: bool = False,
               example: torch.Tensor | None = None, seed: int = 0, hessian_estimator: str = "fisher",
               slimming_epochs: int = 2, slimming_l1: float = 1e-3, lr: float = 1e-3, device: str = "auto",
               callbacks: Iterable[object] = (), calibration_samples: int = calibration.SAMPLES) -> Scores:
    """Score every weight (or, ``structured=True``, every channel) of ``model`` once; then
    ``masks_at(scores, s)`` gives the masks at any sparsity ``s`` cheaply.

    Works on a copy: ``model`` is untouched. For "slimming" the copy is first trained
    ``slimming_epochs`` epochs with the L1 penalty on BatchNorm scales; ``scores.model`` is that copy.

    Args:
        model: the network to score.
        criterion: a name of `kdnb.engine.prune.score.criteria.REGISTRY` ("l1", "lamp", "taylor", "obs", ...).
        data: labelled batches: the statistics (gradients, layer inputs) read their first
            ``calibration_samples`` samples; slimming trains on all of them.
        structured: score channels (coupled groups, via Torch-Pruning's DependencyGraph) instead of weights.
        example: an input batch to trace the model (structured); by default the first batch of ``data``.
        seed: seeds the random criterion and Hutchinson's probes.
        hessian_estimator: the hessian criterion's diagonal: "fisher" (empirical Fisher, per-sample gradients
            squared) or "hutchinson" (Hutchinson's estimator, one Rademacher probe per batch).
        calibration_samples: how many samples of ``data`` the statistics read (default `calibration.SAMPLES`):
            what bounds the cost of scoring on a large training set.
    """
    arguments.check_importance(model, criterion, data, structured, example, seed, hessian_estimator,
                               slimming_epochs, slimming_l1, lr, device, callbacks, calibration_samples)
    with calibration.loaders_untouched(data):  # iterating a shuffled loader does not move the user's shuffling
        try:
            return _importance(model, criterion, data, structured, example, seed, hessian_estimator,
                               slimming_epochs, slimming_l1, lr, device, callbacks, calibration_samples)
        except KeyboardInterrupt:  # scores are whole or nothing; the model was never touched (a copy is scored)
            raise KeyboardInterrupt(f"importance was interrupted while scoring ({criterion}); there are no scores "
                                    "yet, and the model is as given") from None


def _importance(model: nn.Module, criterion: str, data: Iterable | None, structured: bool,
                example: torch.Tensor | None, seed: int, hessian_estimator: str, slimming_epochs: int,
                slimming_l1: float, lr: float, device: str, callbacks: Iterable[object], samples: int) -> Scores:
    record = check_criterion(criterion, data, model, structured, hessian_estimator)
    work = make_permanent(clone(model))
    if record.statistic == "batchnorm_scale" and slimming_epochs:
        estimate.slimming_phase(work, data, epochs=slimming_epochs, l1=slimming_l1, lr=lr,  # type: ignore[arg-type]
                                device=str(resolve_device(device)), seed=seed, callbacks=callbacks)
        work.to("cpu")
    if structured and example is None:
        if data is None:
            raise KdnbError("structured pruning needs an example input to trace the model: pass data= "
                            "(its first batch is used) or example=torch.randn(1, ...)")
        example = split_batch(first_batch(data))[0]
    return compute_scores(work, record, data, structured, example, seed, hessian_estimator, samples)


def compute_scores(model: nn.Module, record: criteria.Criterion, data: Iterable | None, structured: bool,
                   example: torch.Tensor | None, seed: int, hessian_estimator: str, samples: int,
                   phases: Phases | None = None) -> Scores:
    """`Scores` of ``model`` as it is (no training), its statistics read on the first ``samples`` of ``data``;
    ``phases`` hears "calibrate" (layer by layer where the statistics are layer-wise) and "score"."""
    phases = phases or silent()
    groups = channel_groups(model, dependency_graph(model, _tracing(example).to(next(model.parameters()).device))) \
        if structured else []  # type: ignore[union-attr]
    groups = estimate.untied_groups(model, groups)  # a shared weight's channels stay whole: the tie holds
    context = _Context(model, data, structured, seed, hessian_estimator, groups, samples, phases.tracker("calibrate"))
    phases.report("calibrate", 0, 1)
    statistics = STATISTICS[record.statistic](context)
    phases.report("calibrate", 1, 1)
    values = {key: record.formula(*args) for key, args in phases.each("score", list(statistics.items()))}
    distributed.broadcast_from_main(values.values())  # several processes: rank 0's scores, so the same masks
    prunable = list(prunable_weights(model))
    shapes = {n: p.shape for n, p in model.named_parameters(remove_duplicate=False)}  # tied: every name
    result = Scores(record.name, structured, model, {} if record.channel and structured else
                    {n: s for n, s in values.items() if n in prunable}, prunable, shapes, groups)
    for group in groups:
        channel = values.get(group.root) if record.channel else _channel_scores(group, values, record.reads)
        if channel is not None:
            result.channels[group.root] = channel.detach().double().cpu()
    return result


def _tracing(example: torch.Tensor) -> torch.Tensor:
    """Two samples of ``example`` (batch first), enough to trace the model's graph: a ResNet-50 traced on a batch
    of 32 images at 224x224 costs a quarter of a pass of 128 calibration images, for the same graph."""
    return example[:2] if isinstance(example, torch.Tensor) and example.dim() > 1 and len(example) > 2 else example


def _channel_scores(group: ChannelGroup, values: dict[str, torch.Tensor], reads: bool) -> torch.Tensor | None:
    """Each channel's element scores summed over the group's slices; ``reads``: over the slices that read the
    channel only (the next layers' input columns; removing a channel is exactly zeroing them), the whole group
    where the criterion scores none of those."""
    readers = replace(group, slices=[s for s in group.slices if s.consumer]) if reads else group
    channel = channel_scores(readers, values)
    return channel if channel is not None or not reads else channel_scores(group, values)
