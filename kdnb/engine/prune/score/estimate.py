"""The statistics behind the data-driven criteria, accumulated over the first ``samples`` samples of the batches
given (`kdnb.prune`'s ``calibration_samples``; None: every batch).

- `squared_gradients`: the batch gradient squared, averaged over batches (taylor);
- `fisher_diagonal`: the Hessian diagonal by the empirical Fisher (hessian, the default estimator);
- `hutchinson_diagonal`: the Hessian diagonal by Hutchinson's estimator (hessian, ``estimator="hutchinson"``);
- `group_gradient_weight`: per batch, the sum of gradient x weight over each channel's parameters (taylor_group);

The model is scored in eval mode (BatchNorm running statistics, no dropout): the loss whose change the
scores estimate is the loss of the model as it will be used.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from kdnb.engine import batches, checks
from kdnb.engine.device import eval_mode, model_device, to_device
from kdnb.engine.prune.graph.groups import ChannelGroup, channel_scores
from kdnb.errors import KdnbError, warn

ESTIMATORS = ("fisher", "hutchinson")  # the hessian criterion's diagonals: `fisher_diagonal`, `hutchinson_diagonal`


def _batches(model: nn.Module, data: Iterable, criterion: str, loss_fn: Callable = F.cross_entropy,
             samples: int | None = None) -> Iterator[tuple[tuple[tuple, dict], torch.Tensor]]:
    """The batches holding the first ``samples`` samples (None: every batch; the last one cut to fit) as (inputs
    (args, kwargs), labels) on the model's device. Each is checked as it comes (for cross-entropy: a min and a
    max of its labels against the classes the model outputs), so a bad later batch is one line. The cap bounds
    what a gradual schedule's re-scoring costs on a large training set: it reads the data at each of its updates."""
    device, classes, count = model_device(model), None if loss_fn is F.cross_entropy else 0, 0
    for index, batch in checks.numbered_batches(data, lambda i: f"batch {i + 1} (criterion {criterion!r})"):
        where = f"data (batch {index + 1}, criterion {criterion!r})"
        args, kwargs, y = checks.check_batch(batch, where)
        if y is None:
            checks.check_labelled(batch, y, where, f"criterion {criterion!r}")
        if samples is not None:
            (args, kwargs), y = batches.first_rows(args, kwargs, samples - count), y[:samples - count]
            count += len(y)
        (args, kwargs), y = to_device((args, kwargs), device), y.to(device)
        if classes is None:
            with torch.no_grad():
                out = batches.logits_of(batches.call_model(model, *batches.first_rows(args, kwargs, 1)))
            classes = out.shape[-1] if out.dim() in (2, 3) else 0
        if classes:
            checks.check_labels(y, (batches.batch_size(args, kwargs), *y.shape[1:], classes), f"in {where}")
        yield (args, kwargs), y
        if samples is not None and count >= samples:  # stop before the loader loads a batch no one reads
            return


def batch_loss(model: nn.Module, inputs: tuple[tuple, dict], y: torch.Tensor, loss_fn: Callable) -> torch.Tensor:
    """``loss_fn(logits, labels)`` of one batch (sequence logits: over the positions that count)."""
    args, kwargs = inputs
    logits = batches.logits_of(batches.call_model(model, args, kwargs))
    logits, y, _ = batches.rows(model, logits, y, kwargs)
    return loss_fn(logits, y)


def under_every_name(model: nn.Module, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``stats`` of a tied parameter under each of its names: ``named_parameters()`` (and so the gradients)
    see a weight shared by two layers once, under its first name; the pruning masks both."""
    first = {id(p): n for n, p in model.named_parameters()}
    return {n: stats[first[id(p)]] for n, p in model.named_parameters(remove_duplicate=False)
            if first.get(id(p)) in stats}


def tied_names(model: nn.Module) -> set[str]:
    """Every name of each parameter that two or more modules share (tied weights: an embedding and the output
    layer, an encoder and its mirror)."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return {name for shared in names.values() if len(shared) > 1 for name in shared}


def untied_groups(model: nn.Module, groups: list[ChannelGroup]) -> list[ChannelGroup]:
    """The channel groups that cut every tied weight they touch alike under all its names. An embedding and
    the output layer that share it lose the same columns in one group (kept); a weight whose names sit in
    different groups, or along different dimensions, would be cut for both layers where Torch-Pruning's graph
    sees two weights: those channels stay whole (a warning says which), so the tie holds."""
    sharing = _names_by_parameter(model)
    kept = [g for g in groups if _cuts_ties_alike(g, sharing)]
    if len(kept) < len(groups):
        tied = sorted({n for names in sharing.values() for n in names})
        warn(f"{', '.join(tied)} share one weight (tied): structured pruning leaves the "
             f"{len(groups) - len(kept)} channel group(s) that would cut it differently under its names whole, so "
             "the tie holds; untie the weights to prune those channels too", RuntimeWarning)
    return kept


def _names_by_parameter(model: nn.Module) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return {key: shared for key, shared in names.items() if len(shared) > 1}


def _cuts_ties_alike(group: ChannelGroup, sharing: dict[int, list[str]]) -> bool:
    cuts = {s.param: (s.dim, s.index.tolist()) for s in group.slices}
    for shared in sharing.values():
        touched = [cuts.get(name) for name in shared]
        if any(touched) and (None in touched or any(cut != touched[0] for cut in touched)):
            return False
    return True


def _named_trainable(model: nn.Module) -> tuple[list[str], list[nn.Parameter]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, _ in named], [p for _, p in named]


def squared_gradients(model: nn.Module, data: Iterable, loss_fn: Callable = F.cross_entropy,
                      samples: int | None = None) -> dict[str, torch.Tensor]:
    """Mean over batches of the squared batch gradient, for every trainable parameter."""
    names, params = _named_trainable(model)
    sums = [torch.zeros_like(p) for p in params]
    count = 0
    with eval_mode(model):
        for inputs, y in _batches(model, data, "taylor", loss_fn, samples):
            grads = torch.autograd.grad(batch_loss(model, inputs, y, loss_fn), params, allow_unused=True)
            for total, g in zip(sums, grads):
                if g is not None:
                    total += g.detach().pow(2)
            count += 1
    return under_every_name(model, {n: s / max(count, 1) for n, s in zip(names, sums)})


def group_gradient_weight(model: nn.Module, data: Iterable, groups: list[ChannelGroup],
                          loss_fn: Callable = F.cross_entropy, samples: int | None = None) -> dict[str, torch.Tensor]:
    """For each group root, ``(batches, channels)``: sum over the channel's parameters s of g_s w_s, per batch."""
    names, params = _named_trainable(model)
    rows: dict[str, list[torch.Tensor]] = {g.root: [] for g in groups}
    with eval_mode(model):
        for inputs, y in _batches(model, data, "taylor_group", loss_fn, samples):
            grads = torch.autograd.grad(batch_loss(model, inputs, y, loss_fn), params, allow_unused=True)
            products = under_every_name(model, {n: (g * p).detach() for n, p, g in zip(names, params, grads)
                                                if g is not None})
            for group in groups:
                rows[group.root].append(channel_scores(group, products))
    return {root: torch.stack(values) for root, values in rows.items() if values and values[0] is not None}


def fisher_diagonal(model: nn.Module, data: Iterable, loss_fn: Callable = F.cross_entropy,
                    chunk: int = 64, samples: int | None = None) -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal, F_kk = mean over every sample n of (dL_n/dw_k)^2: a stand-in for the
    Hessian diagonal near a minimum (never negative), from per-sample gradients (``torch.func.vmap`` of
    ``torch.func.grad``, ``chunk`` samples at a time)."""
    from torch.func import functional_call, grad, vmap

    names, params = _named_trainable(model)
    buffers = dict(model.named_buffers())
    sums = [torch.zeros_like(p) for p in params]
    count = 0

    def sample_loss(weights: dict[str, torch.Tensor], args: tuple, kwargs: dict, y: torch.Tensor) -> torch.Tensor:
        args, kwargs, y = tuple(a.unsqueeze(0) for a in args), {k: v.unsqueeze(0) for k, v in kwargs.items()}, \
            y.unsqueeze(0)
        out = batches.logits_of(functional_call(model, ({**weights, **buffers},), args, kwargs))
        return loss_fn(*batches.ignoring_rows(model, out, y, kwargs))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0, 0))
    weights = {n: p.detach() for n, p in zip(names, params)}
    with eval_mode(model):
        for (args, kwargs), y in _batches(model, data, "hessian", loss_fn, samples):
            for start in range(0, len(y), chunk):
                grads = per_sample(weights, *batches.row_slice(args, kwargs, start, start + chunk),
                                   y[start:start + chunk])
                for total, name in zip(sums, names):
                    total += grads[name].pow(2).sum(0)
            count += len(y)
    return under_every_name(model, {n: s / max(count, 1) for n, s in zip(names, sums)})


def hutchinson_diagonal(model: nn.Module, data: Iterable, probes: int = 1, seed: int = 0,
                        loss_fn: Callable = F.cross_entropy, samples: int | None = None) -> dict[str, torch.Tensor]:
    """Hutchinson's estimate of diag(H), averaged over the batches and ``probes`` probes per batch:
    diag(H) ~ E_z[z * (H z)] with Rademacher z (Bekas, Kokiopoulou & Saad 2007)."""
    names, params = _named_trainable(model)
    sums = [torch.zeros_like(p) for p in params]
    generator = torch.Generator().manual_seed(seed)
    count = 0
    with eval_mode(model):
        for inputs, y in _batches(model, data, "hessian", loss_fn, samples):
            grads = torch.autograd.grad(batch_loss(model, inputs, y, loss_fn), params, create_graph=True,
                                        allow_unused=True)
            used = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
            for _ in range(probes):
                zs = [torch.randint(0, 2, g.shape, generator=generator).to(g) * 2 - 1 for _, g in used]
                hz = torch.autograd.grad([g for _, g in used], [params[i] for i, _ in used], grad_outputs=zs,
                                         retain_graph=True, allow_unused=True)
                for (i, _), z, h in zip(used, zs, hz):
                    if h is not None:
                        sums[i] += z * h.detach()
                count += 1
    return under_every_name(model, {n: s / max(count, 1) for n, s in zip(names, sums)})
