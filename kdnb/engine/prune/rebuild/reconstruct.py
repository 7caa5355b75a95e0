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

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils import prune

from kdnb.errors import warn
from kdnb.engine.prune.rebuild.output_refit import output_data, refit_output
from kdnb.engine.prune.score.calibration import (DAMP, SAMPLES, calibration_batches, forward_order, group_statistics,
                                                 grouped, input_channel_order, layer_statistics, solvable)
from kdnb.engine.prune.score.estimate import tied_names

_BLOCK_BYTES = 64 * 2**20  # bound on the (rows x k x k) fp64 systems solved at once


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
    bias), damped by ``damp`` x mean diag(``gram``); rows sharing a support size are solved in one batch."""
    rows, width = support.shape
    solution = torch.zeros(rows, width, dtype=torch.float64, device=gram.device)
    lam = damp * float(gram.diagonal().mean()) if damp else 0.0
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
            factor, info = torch.linalg.cholesky_ex(system)
            if bool(info.any()):  # not positive definite (no damping, too few samples): least squares instead
                values = torch.linalg.lstsq(system, rhs).solution.squeeze(-1)
            else:
                values = torch.cholesky_solve(rhs, factor).squeeze(-1)
            solution[sel[:, None], index] = values
    return solution


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
    solved = solve_rows(gram, cross, support & ~dead, damp)
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
                predictions: bool = True) -> nn.Module:
    """Re-solve every Linear/Conv layer of ``model`` (masked or with zeroed channels; a grouped conv one
    conv-group at a time) against ``dense``, in forward order, on the first ``samples`` samples of ``data``; in
    place, returns ``model``.

    ``reselect``: first re-choose each masked Linear's or ungrouped conv's mask, at the sparsity it has, by
    `sparsegpt` on the inputs the already-pruned layers produce (criterion "obs"); ``pattern`` (N, M) makes it
    N:M. ``predictions``: the Linear whose outputs are the model's is then re-solved for the dense model's
    predicted distribution (`kdnb.engine.prune.rebuild.output_refit`), which the least squares only approximates.

    Cost: one forward pass of the calibration set per layer, and a ``(d+1) x (d+1)`` fp64 Gram matrix
    (``d`` = the layer's inputs, ``in_channels x kernel`` for a conv) plus ``(d+1) x out`` per layer at a time.
    """
    batches = calibration_batches(data, samples)
    count = sum(len(x) for x in batches)
    tied = tied_names(model)  # a shared weight cannot be re-solved for two layers at once: it keeps its masking
    order = forward_order(model, batches[0])
    for name in order:
        module = model.get_submodule(name)
        if not (solvable(module) or grouped(module)) or f"{name}.weight" in tied or f"{name}.weight_orig" in tied:
            continue
        output = output_data(model, dense, name, batches) if predictions and name == order[-1] \
            and isinstance(module, nn.Linear) else None
        statistics = layer_statistics if solvable(module) else group_statistics
        gram, cross, rows = statistics(model, name, batches, dense)
        if rows < gram.shape[-1]:
            warn(f"calibration has {count} samples ({rows} input rows) for layer {name!r} with {gram.shape[-1]} "
                 "inputs: its least squares is underdetermined and is damped; pass more data for a better fit",
                 RuntimeWarning)
        if reselect and solvable(module) and isinstance(getattr(module, "weight_mask", None), torch.Tensor):
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
        masked = _masked(module) if output is not None else None  # what plain masking leaves, for the comparison
        reconstruct_layer(module, gram, cross, rows, damp)
        if output is not None:
            _refit_output_layer(module, *output, masked)
    return model


def _masked(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias as plain masking leaves them."""
    weight, bias, keep, bias_keep = _kept(module)
    return weight.detach() * keep, bias.detach() * bias_keep
