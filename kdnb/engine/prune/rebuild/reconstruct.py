r"""Reconstruction: after a criterion has chosen what to remove, re-solve what is kept.

Each layer, in forward order, gets the weights (and bias) that best reproduce the *dense* layer's outputs
from the inputs the already-pruned layers produce, over the calibration samples (`calibration`):

.. math:: \min_{w_r:\ w_{r,j} = 0\ \forall j \notin K_r} \lVert A\, w_r - y_r \rVert^2 + \lambda \lVert w_r \rVert^2
   \;\Rightarrow\; w_{r,K} = (A_K^\top A_K + \lambda I)^{-1} A_K^\top y_r

for every output row ``r`` with kept inputs ``K_r``; ``A`` is the pruned model's layer input (im2col for a
conv, plus a column of ones for the bias), ``y_r`` the dense layer's output ``r``; a grouped conv's rows read
only their conv-group's inputs, so ``A`` there is that conv-group's im2col. With ``A`` the dense
inputs this is exactly Optimal Brain Surgeon's update for removing all the pruned weights of the row at once,
:math:`\delta w = -H^{-1} E (E^\top H^{-1} E)^{-1} E^\top w`, :math:`H = 2A^\top A` (Hassibi & Stork 1993;
layer-wise, Dong et al. 2017 "L-OBS"; Frantar & Alistarh 2022 "OBC"); SparseGPT (Frantar & Alistarh 2023)
approximates the same solve column block by column block for layers too large to solve row by row.
Structured pruning is the same solve on the *consumers* of removed channels (their input columns are the
removed ones): the least-squares channel refit of He et al. 2017 "Channel Pruning" and ThiNet (Luo et al. 2017).

Damping :math:`\lambda` = ``damp`` x the mean diagonal of :math:`A^\top A` (SparseGPT's 1 %), solved in fp64 by
Cholesky. A row keeps its masked weights when they reproduce the dense outputs better than the solve (the
damping could otherwise cost a row whose inputs did not change), so reconstruction never increases a layer's
error over plain masking. The model's output layer then goes on from its least-squares solution to the dense
model's predictions (`kdnb.engine.prune.rebuild.output_refit`), never ending above the divergence of either.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.utils import prune

from kdnb.errors import warn
from kdnb.engine.prune.rebuild.output_refit import fits, refit_output
from kdnb.engine.prune.score.calibration import (DAMP, SAMPLES, calibration_batches, forward_order, grouped,
                                                 input_channel_order, solvable)
from kdnb.engine.prune.score.estimate import tied_names
from kdnb.engine.prune.score.linalg import inverse_factor
from kdnb.engine.prune.score.stream import Lockstep, lockstep, statistics

_BLOCK_BYTES = 64 * 2**20  # bound on the (rows x k x k) fp64 systems solved at once
# The exact per-row re-solve runs where its modelled cost is at most 1/EXACT_FACTOR of the refined sweep's: its
# batched Cholesky factors of small systems ran many times slower per modelled multiply-add than the sweep's
# products, for a fraction of a percent less squared error (bench/prune_scale.py --part solve)
EXACT_FACTOR = 16.0
EXACT_BELOW = 2**26  # multiply-adds under which the exact solve always runs (a fraction of a second)
REFINE_STEPS = 10  # conjugate-gradient steps after the sweep (`_refine`)


def _weight(module: nn.Module) -> torch.Tensor:
    """The trainable weight tensor (``weight_orig`` under a torch.nn.utils.prune mask)."""
    return getattr(module, "weight_orig", module.weight)


def _bias(module: nn.Module) -> torch.Tensor | None:
    return getattr(module, "bias_orig", module.bias)


def _mask(module: nn.Module, attr: str, like: torch.Tensor) -> torch.Tensor:
    mask = getattr(module, f"{attr}_mask", None)
    return mask.bool() if isinstance(mask, torch.Tensor) else torch.ones_like(like, dtype=torch.bool)


def row_errors(weights: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor, target_energy: torch.Tensor
               ) -> torch.Tensor:
    r"""Squared error of each row, :math:`\lVert A w_r - y_r\rVert^2 = w_r^\top G w_r - 2 w_r^\top c_r + \lVert y_r\rVert^2`
    (``G = A^T A``, ``c = A^T Y``, ``target_energy`` the last term)."""
    return ((weights @ gram) * weights).sum(1) - 2 * (weights * cross.T).sum(1) + target_energy


def solve_rows(gram: torch.Tensor, cross: torch.Tensor, support: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """Least squares of every row on its support (``support[r, j]`` True = input ``j`` kept, last column the
    bias), damped by ``damp`` x mean diag(``gram``), exactly: rows sharing a support (a structured refit: all of
    them) share one Cholesky factor, the others are batched by support size.

    Cost: ``sum over distinct supports of k^3 / 3 + rows k^2`` (``k`` kept inputs): SparseGPT's ``O(d^3 + rows
    d^2)`` when the rows share their supports, up to ``rows k^3 / 3`` when each row has its own (`exact_cost`;
    `resolve_rows` then takes `sweep_rows` instead)."""
    rows, width = support.shape
    solution = torch.zeros(rows, width, dtype=torch.float64, device=gram.device)
    lam = damp * float(gram.diagonal().mean()) if damp else 0.0
    patterns, which = torch.unique(support, dim=0, return_inverse=True)
    if len(patterns) * 4 <= rows:  # few distinct supports: one factor each, every row of it a right-hand side
        for p, pattern in enumerate(patterns):
            index = torch.nonzero(pattern).flatten()
            if len(index):
                chosen = torch.nonzero(which == p).flatten()
                system = gram[index[:, None], index[None, :]]
                system.diagonal().add_(lam)
                solution[chosen[:, None], index] = _solve(system, cross[index][:, chosen]).T
        return solution
    counts = support.sum(1)
    for k in counts.unique().tolist():
        if k == 0:
            continue
        chosen = torch.nonzero(counts == k).flatten()
        chunk = max(1, _BLOCK_BYTES // (8 * k * k))
        for start in range(0, len(chosen), chunk):
            sel = chosen[start:start + chunk]
            index = torch.nonzero(support[sel])[:, 1].view(len(sel), k)  # kept inputs of each row, in order
            system = gram[index[:, :, None], index[:, None, :]]
            system.diagonal(dim1=1, dim2=2).add_(lam)
            rhs = cross.T[sel[:, None], index].unsqueeze(-1)
            solution[sel[:, None], index] = _solve(system, rhs).squeeze(-1)
    return solution


def _solve(system: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``system^-1 rhs`` by Cholesky; by least squares where ``system`` is not positive definite (no damping,
    too few samples)."""
    factor, info = torch.linalg.cholesky_ex(system)
    if bool(info.any()):
        return torch.linalg.lstsq(system, rhs).solution
    return torch.cholesky_solve(rhs, factor)


def exact_cost(support: torch.Tensor) -> float:
    """Multiply-adds of `solve_rows` on ``support``: a Cholesky per distinct support and a solve per row."""
    counts = support.sum(1).double()
    distinct = len(torch.unique(support, dim=0)) if support.shape[0] > 1 else 1
    if distinct * 4 <= support.shape[0]:
        return float(distinct * counts.max() ** 3 / 3 + (counts ** 2).sum())
    return float((counts ** 3 / 3 + counts ** 2).sum())


def sweep_cost(support: torch.Tensor) -> float:
    """Multiply-adds of `sweep_rows`: SparseGPT's ``d^3`` (the factor of the inverse Hessian) plus ``rows d^2`` for
    the sweep and for each refining step."""
    rows, width = support.shape
    return float(width ** 3 + (1 + REFINE_STEPS) * rows * width ** 2)


def resolve_rows(gram: torch.Tensor, cross: torch.Tensor, support: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """The rows re-solved on their supports: exactly (`solve_rows`) where that costs at most `sweep_rows`
    (SparseGPT's sweep, refined), whose batched Cholesky factors of small systems run about `EXACT_FACTOR` times
    slower per multiply-add than its matrix products, or costs under `EXACT_BELOW` anyway; the sweep elsewhere.
    Cost: ``O(d^3 + rows d^2)``."""
    cost = exact_cost(support)
    if cost <= EXACT_BELOW or EXACT_FACTOR * cost <= sweep_cost(support):
        return solve_rows(gram, cross, support, damp)
    return sweep_rows(gram, cross, support, damp)


@torch.no_grad()
def sweep_rows(gram: torch.Tensor, cross: torch.Tensor, support: torch.Tensor, damp: float = DAMP,
               blocksize: int = 128) -> torch.Tensor:
    r"""The rows fitted on their supports by SparseGPT's lazy-batch OBS sweep (Frantar & Alistarh 2023, Alg. 1,
    the mask given): start from the unconstrained least squares :math:`W^* = C^	op (G + \lambda I)^{-1}`, whose
    masked error is the squared distance to :math:`W^*` in the metric :math:`G`; then visit the columns in order,
    zero the pruned weight ``q`` of every row and move the later columns by OBS's update
    :math:`-rac{w_q}{U_{qq}} U_{q,q:}` (``U`` the upper Cholesky factor of :math:`(G+\lambda I)^{-1}`), in blocks
    of ``blocksize`` columns whose updates to the rest are one matrix product. Not the exact per-row optimum
    (a kept weight is never moved for a later column's removal), which `solve_rows` is: `_refine`'s conjugate
    gradients then close the gap.

    ``U`` is `linalg.inverse_factor` (fp32, damped by ``damp`` x mean diag, more where the factor fails).
    Cost: ``2 d^3 / 3 + (1 + REFINE_STEPS) rows d^2`` multiply-adds; memory ``d^2 + rows d``.
    """
    width = gram.shape[0]
    dead = gram.diagonal() == 0
    h = gram.clone()
    h[dead, dead] = 1.0
    upper = inverse_factor(h, damp)
    solution = (cross.T.to(upper) @ upper.T) @ upper  # W* = C^T H^-1, H^-1 = U^T U
    solution[:, dead] = 0.0
    pruned = ~support
    for start in range(0, width, blocksize):
        end = min(start + blocksize, width)
        block, inverse = solution[:, start:end].clone(), upper[start:end, start:end]
        errors = torch.zeros_like(block)
        for i in range(end - start):
            error = torch.where(pruned[:, start + i], block[:, i], 0.0) / inverse[i, i]
            block[:, i:] -= error[:, None] * inverse[i, i:][None, :]
            errors[:, i] = error
        solution[:, start:end] = block
        solution[:, end:] -= errors @ upper[start:end, end:]
    return _refine(torch.where(support, solution, 0.0), gram, cross, support, damp).double()


def _refine(start: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor, support: torch.Tensor, damp: float,
            steps: int = REFINE_STEPS) -> torch.Tensor:
    r"""``steps`` of conjugate gradients from ``start`` on every row's least squares restricted to its support,
    all rows at once, preconditioned by the diagonal (Jacobi): :math:`\min_{w_r} w_r^	op H w_r - 2 w_r^	op c_r`,
    :math:`H = G + \lambda I`. From the sweep, `REFINE_STEPS` steps reach the exact solve's error
    (bench/prune_scale.py --part solve). Cost: ``rows d^2`` per step, fp32."""
    h = gram.float()
    h.diagonal().add_(damp * float(gram.diagonal().mean()))
    keep = support.to(h)
    w = start.to(h) * keep
    residual = (cross.T.to(h) - w @ h) * keep  # minus the gradient
    inverse_diagonal = 1.0 / h.diagonal().clamp_min(torch.finfo(h.dtype).tiny)
    z = residual * inverse_diagonal
    direction, rz = z.clone(), (residual * z).sum(1)
    for _ in range(steps):
        q = (direction @ h) * keep
        alpha = rz / (direction * q).sum(1).clamp_min(torch.finfo(h.dtype).tiny)
        w += alpha[:, None] * direction
        residual -= alpha[:, None] * q
        z = residual * inverse_diagonal
        new = (residual * z).sum(1)
        direction = z + (new / rz.clamp_min(torch.finfo(h.dtype).tiny))[:, None] * direction
        rz = new
    return w


@torch.no_grad()
def sparsegpt(weight: torch.Tensor, gram: torch.Tensor, sparsity: float, pattern: tuple[int, int] | None = None,
              blocksize: int = 128, damp: float = DAMP) -> torch.Tensor:
    r"""SparseGPT's OBS sweep (Frantar & Alistarh 2023, Algorithm 1): which weights of ``weight`` (out, d) to keep.

    With the upper Cholesky factor ``U`` of :math:`H^{-1}` (:math:`H = 2X^\top X` damped), columns are visited
    in blocks of ``blocksize``: in each block the weights of lowest OBS saliency :math:`w^2 / U_{qq}^2` are
    pruned (``sparsity`` of the block, or M-N of every M with ``pattern=(N, M)``), then column by column the
    pruned weight's error :math:`(w_q - 0) / U_{qq}` is pushed onto the later columns through row ``q`` of ``U``,
    the lazy-batch form of OBS's update. Returns the keep mask (True = kept); `reconstruct_layer` then
    re-solves the kept weights exactly.
    """
    w = weight.detach().double().clone()
    h = gram.detach().double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(damp * float(h.diagonal().mean()))
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for start in range(0, w.shape[1], blocksize):
        end = min(start + blocksize, w.shape[1])
        block, inverse = w[:, start:end].clone(), upper[start:end, start:end]
        mask = torch.zeros_like(block, dtype=torch.bool)
        if pattern is None:
            saliency = block.pow(2) / inverse.diagonal().pow(2)
            count = int(saliency.numel() * sparsity)
            if count:
                mask.view(-1)[torch.topk(saliency.flatten(), count, largest=False).indices] = True
        errors = torch.zeros_like(block)
        for i in range(end - start):
            if pattern is not None and i % pattern[1] == 0:
                saliency = block[:, i:i + pattern[1]].pow(2) / inverse.diagonal()[i:i + pattern[1]].pow(2)
                mask.scatter_(1, i + torch.topk(saliency, pattern[1] - pattern[0], dim=1, largest=False).indices, True)
            column = block[:, i]
            error = torch.where(mask[:, i], column, 0.0) / inverse[i, i]
            block[:, i:] -= error[:, None] * inverse[i, i:][None, :]
            errors[:, i] = error
        w[:, end:] -= errors @ upper[start:end, end:]
        pruned[:, start:end] = mask
    return ~pruned


def _refit(current: torch.Tensor, support: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor, rows: int,
           damp: float) -> torch.Tensor:
    """The rows ``current`` (out, d+1; bias last) re-solved on their ``support``, each kept as it is where that
    reproduces the dense outputs better."""
    dead = gram.diagonal() == 0  # inputs never non-zero on the calibration set: their weights stay as they are
    if rows < support.shape[1]:  # underdetermined: at least SparseGPT's damping
        damp = max(damp, DAMP)
    solved = resolve_rows(gram, cross, support & ~dead, damp)
    solved[:, dead] = current[:, dead]
    energy = torch.zeros(len(current), dtype=torch.float64, device=gram.device)  # ||y_r||^2 cancels in the comparison
    better = row_errors(solved, gram, cross, energy) < row_errors(current, gram, cross, energy)
    return torch.where(better[:, None], solved, current)


@torch.no_grad()
def reconstruct_layer(module: nn.Module, gram: torch.Tensor, cross: torch.Tensor, rows: int,
                      damp: float = DAMP) -> None:
    """Re-solve ``module``'s kept weights and bias in place from ``gram = A^T A`` and ``cross = A^T Y``; a `grouped`
    conv from each conv-group's (``(groups, d+1, d+1)`` and ``(groups, d+1, out / groups)``, `group_statistics`):
    the rows of group ``k`` read only its inputs, so each group is its own least squares."""
    weight, bias, keep, bias_keep = _kept(module)
    out = weight.shape[0]
    flat = weight.detach().reshape(out, -1).double()
    keep, bias_keep = keep.reshape(out, -1).to(gram.device), bias_keep.to(gram.device)
    current = torch.cat([flat.to(gram.device) * keep, (bias.detach().double().to(gram.device) * bias_keep)[:, None]], 1)
    support = torch.cat([keep, bias_keep[:, None]], 1)
    if gram.dim() == 2:
        final = _refit(current, support, gram, cross, rows, damp)
    else:  # one conv-group's rows at a time
        final = torch.cat([_refit(c, s, g, y, rows, damp) for c, s, g, y in
                           zip(current.chunk(len(gram)), support.chunk(len(gram)), gram, cross)])
    weight.copy_(torch.where(keep, final[:, :-1], flat.to(gram.device)).view_as(weight).to(weight))
    if _bias(module) is not None:
        bias.copy_(torch.where(bias_keep, final[:, -1], bias.detach().double().to(gram.device)).to(bias))
    _remask(module)


def _remask(module: nn.Module) -> None:
    """Masked tensors are recomputed from ``weight_orig`` at the next forward: recompute them now."""
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, prune.BasePruningMethod):
            setattr(module, hook._tensor_name, hook.apply_mask(module))


def _kept(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A layer's trainable weight and bias (zeros without one), and their keep masks (a missing bias: none kept)."""
    weight, bias = _weight(module), _bias(module)
    if bias is None:
        zeros = weight.new_zeros(weight.shape[0])
        return weight, zeros, _mask(module, "weight", weight), zeros.bool()
    return weight, bias, _mask(module, "weight", weight), _mask(module, "bias", bias)


@torch.no_grad()
def _refit_output_layer(module: nn.Linear, inputs: torch.Tensor, target: torch.Tensor,
                        masked: tuple[torch.Tensor, torch.Tensor]) -> None:
    """`output_refit.refit_output` of the model's output layer, in place, on its least-squares solution."""
    weight, bias, keep, bias_keep = _kept(module)
    new_weight, new_bias = refit_output(weight, bias, keep, bias_keep, inputs, target, masked)
    weight.copy_(torch.where(keep, new_weight.to(weight), weight))
    if _bias(module) is not None:
        bias.copy_(torch.where(bias_keep, new_bias.to(bias), bias))
    _remask(module)


def reconstruct(model: nn.Module, dense: nn.Module, data: Iterable, samples: int = SAMPLES,
                damp: float = DAMP, reselect: bool = False, pattern: tuple[int, int] | None = None,
                predictions: bool = True, progress: Callable[[int, int], None] | None = None) -> nn.Module:
    """Re-solve every Linear/Conv layer of ``model`` (masked or with zeroed channels; a grouped conv one
    conv-group at a time) against ``dense``, in forward order, on the first ``samples`` samples of ``data``; in
    place, returns ``model``.

    ``reselect``: first re-choose each masked Linear's or ungrouped conv's mask, at the sparsity it has, by
    `sparsegpt` on the inputs the already-pruned layers produce (criterion "obs"); ``pattern`` (N, M) makes it
    N:M. ``predictions``: the Linear whose outputs are the model's is then re-solved for the dense model's
    predicted distribution (`kdnb.engine.prune.rebuild.output_refit`), which the least squares only approximates.

    ``progress(done, total)`` is called after each layer.

    Cost: one forward pass of the calibration set through ``model`` and one through ``dense`` in all
    (`stream.Lockstep`), each layer's Gram matrix (`stream.statistics`: ``rows x d^2``, rows subsampled), and its
    re-solve (`solve_rows`: at most SparseGPT's ``O(d^3 + out d^2)``). Memory: the activations live at the current
    layer, and one layer's ``(d+1) x (d+1)`` fp64 Gram matrix plus ``(d+1) x out`` at a time (``d`` = the layer's
    inputs, ``in_channels x kernel`` for a conv).
    """
    batches = calibration_batches(data, samples)
    count = sum(len(x) for x in batches)
    tied = tied_names(model)  # a shared weight cannot be re-solved for two layers at once: it keeps its masking
    order = forward_order(model, batches[0][:1])  # one sample shows the order
    visited = [name for name in order if (solvable(model.get_submodule(name)) or grouped(model.get_submodule(name)))
               and f"{name}.weight" not in tied and f"{name}.weight_orig" not in tied]
    if progress is not None:
        progress(0, len(visited))
    with lockstep(model, visited, batches) as pruned, lockstep(dense, visited, batches, output=True) as target:
        for done, name in enumerate(visited):
            module = model.get_submodule(name)
            inputs, outputs = pruned.at(name), target.at(name)
            gram, cross, rows = statistics(module, inputs, outputs)
            if rows < gram.shape[-1]:
                warn(f"calibration has {count} samples ({rows} input rows) for layer {name!r} with "
                     f"{gram.shape[-1]} inputs: its least squares is underdetermined and is damped; pass more data "
                     "for a better fit", RuntimeWarning)
            if reselect and solvable(module) and isinstance(getattr(module, "weight_mask", None), torch.Tensor):
                _reselect(module, gram, pattern, damp)
            output = _output_rows(module, inputs, outputs, target) if predictions and name == order[-1] \
                and isinstance(module, nn.Linear) else None
            masked = _masked(module) if output is not None else None  # what plain masking leaves, for the comparison
            reconstruct_layer(module, gram, cross, rows, damp)
            if output is not None:
                _refit_output_layer(module, *output, masked)
            del gram, cross
            pruned.release(name)
            target.release(name)
            if progress is not None:
                progress(done + 1, len(visited))
    return model


def _reselect(module: nn.Module, gram: torch.Tensor, pattern: tuple[int, int] | None, damp: float) -> None:
    """Re-choose a masked layer's mask at the sparsity it has by `sparsegpt` (N:M with ``pattern``)."""
    mask = module.weight_mask
    flat = _weight(module).detach().reshape(mask.shape[0], -1)
    if pattern:  # a pattern groups a conv's input channels: sweep in that order, then put them back
        columns = input_channel_order(mask.shape).to(gram.device)  # (the bias column left out)
        chosen = sparsegpt(flat[:, columns], gram[columns][:, columns], 1.0 - float(mask.float().mean()),
                           pattern, damp=damp)
        keep = torch.empty_like(chosen)
        keep[:, columns] = chosen
    else:
        keep = sparsegpt(flat, gram[:-1, :-1], 1.0 - float(mask.float().mean()), damp=damp)  # no bias column
    mask.copy_(keep.view_as(mask).to(mask))


def _output_rows(module: nn.Linear, inputs: list, outputs: list, target: Lockstep
                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The output layer's calibration inputs and the dense logits, fp64, one row per prediction, when the layer's
    outputs are the dense model's (its forward returns them, batch for batch) and the refit `fits`; else None."""
    if any(x is None for x in inputs):
        return None
    results = target.finish()
    if not all(out is result for out, result in zip(outputs, results)):
        return None
    rows = sum(o.numel() // o.shape[-1] for o in outputs)
    if not fits(rows, inputs[0].shape[-1], outputs[0].shape[-1]):
        return None
    a = torch.cat([x.reshape(-1, x.shape[-1]) for x in inputs]).double()
    return a, torch.cat([o.reshape(-1, o.shape[-1]) for o in outputs]).double().to(a.device)


def _masked(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias as plain masking leaves them."""
    weight, bias, keep, bias_keep = _kept(module)
    return weight.detach() * keep, bias.detach() * bias_keep
