"""Calibration inputs of each layer: what the layer-wise criteria (wanda, obs) and the reconstruction read.

A Linear or Conv layer computes ``Y = A W^T`` where ``A`` is its input as a matrix: one row per sample
(Linear) or per sample and output position (Conv: the im2col patches, ``torch.nn.functional.unfold``),
one column per input weight (``in_channels * kernel`` for a conv), plus a column of ones for the bias.
Only ``A^T A`` (the layer Hessian of the squared error, up to the factor 2) and ``A^T Y`` are kept, summed
over batches: memory ``(d+1)^2`` numbers per layer, ``d`` its input size, whatever the calibration size.

Calibration = the first ``samples`` samples of ``data`` (default `SAMPLES`), run in eval mode.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdnb.engine import batches
from kdnb.engine.checks import numbered_batches
from kdnb.engine.device import eval_mode, model_device, to_device
from kdnb.engine.prune.graph.groups import PRUNABLE

SAMPLES = 2048  # calibration samples; digits' whole training split (1438) fits
DAMP = 0.01  # fraction of the mean Hessian diagonal added to it (SparseGPT's percdamp), in scoring and re-solving


def solvable(module: nn.Module) -> bool:
    """Layers whose weights are re-solved as one least squares: Linear and ungrouped Conv1d/2d (a grouped conv's
    rows see only part of the input: `grouped`)."""
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1 and not module.transposed
            and not isinstance(module.padding, str))


def grouped(module: nn.Module) -> bool:
    """Grouped Conv1d/2d (``1 < groups < in_channels``, not depthwise): ``groups`` independent convs, re-solved one
    conv-group at a time (`group_statistics`). A depthwise conv's channels go with its input's: never re-solved."""
    return (isinstance(module, (nn.Conv1d, nn.Conv2d)) and 1 < module.groups < module.in_channels
            and not module.transposed and not isinstance(module.padding, str))


def as_matrix(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input ``x`` of ``module`` as the matrix ``A`` (rows: samples x positions, columns: weight inputs)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv1d):  # as a 2-D conv of height 1
        x = x.unsqueeze(2)
        kernel, stride, padding, dilation = ((1, *module.kernel_size), (1, *module.stride), (0, *module.padding),
                                             (1, *module.dilation))
    else:
        kernel, stride, padding, dilation = module.kernel_size, module.stride, module.padding, module.dilation
    patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (B, d, positions)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def input_channel_order(shape: torch.Size) -> torch.Tensor:
    """The permutation of a weight row's inputs (``in_channels x kernel``, `as_matrix`'s order) that puts, at each
    kernel position, the input channels next to each other: the order in which a conv's N:M groups are read by
    sparse tensor cores (NVIDIA's ASP masks a conv along its input channels). The identity for a Linear."""
    kernel = math.prod(shape[2:])
    return torch.arange(shape[1] * kernel).view(shape[1], kernel).T.flatten()


def output_matrix(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The layer's output as rows matching `as_matrix` (one column per output unit/channel)."""
    if isinstance(module, nn.Linear):
        return y.reshape(-1, y.shape[-1])
    return y.reshape(y.shape[0], y.shape[1], -1).transpose(1, 2).reshape(-1, y.shape[1])


def calibration_batches(data: Iterable, samples: int = SAMPLES) -> list[Any]:
    """The inputs of the first ``samples`` samples of ``data``, as batches: examples as
    `kdnb.engine.batches.call_example` takes them (a tensor, a tuple of inputs, a mapping of keyword inputs)."""
    found, count = [], 0
    for _, batch in numbered_batches(data, lambda i: f"calibration batch {i + 1}"):  # a loader's failure: one line
        example = batches.as_example(*batches.inputs_of(batch))
        found.append(batches.first_example_rows(example, samples - count))
        count += batches.example_rows(found[-1])
        if count >= samples:
            break
    return found


def forward_order(model: nn.Module, example: Any) -> list[str]:
    """Names of the prunable layers in the order the forward pass calls them."""
    order: list[str] = []
    names = {module: name for name, module in model.named_modules() if isinstance(module, PRUNABLE)}
    hooks = [module.register_forward_pre_hook(lambda m, _: order.append(names[m]) if names[m] not in order
                                              else None) for module in names]
    try:
        with torch.no_grad(), eval_mode(model):
            batches.call_example(model, example)
    finally:
        for hook in hooks:
            hook.remove()
    return order


def _with_ones(a: torch.Tensor) -> torch.Tensor:
    return torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], 1)


class _Capture:
    """Forward hook keeping the input (or output) of one module, then stopping the pass there."""

    def __init__(self, module: nn.Module, output: bool):
        self.value: torch.Tensor | None = None
        self.output = output
        self.handle = module.register_forward_hook(self)

    def __call__(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        self.value = (out if self.output else inputs[0]).detach()
        raise _Stop


class _Stop(Exception):
    pass


def _run_until(model: nn.Module, layer: str, x: Any, output: bool) -> torch.Tensor:
    capture = _Capture(model.get_submodule(layer), output)
    try:
        batches.call_example(model, to_device(x, model_device(model)))
    except _Stop:
        pass
    finally:
        capture.handle.remove()
    assert capture.value is not None, f"layer {layer} was not called"
    return capture.value


@torch.no_grad()
def layer_statistics(model: nn.Module, layer: str, examples: list[Any],
                     dense: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """``(A^T A, A^T Y, rows)`` of ``layer``: ``A`` its inputs in ``model`` (with the ones column), ``Y`` the same
    layer's outputs in ``dense`` (bias included; None without ``dense``). Each batch's products are taken in
    the model's dtype and summed in fp64 (as SparseGPT accumulates H), which keeps the im2col matrices of
    convs fast."""
    module = model.get_submodule(layer)
    gram, cross, rows = 0, 0, 0
    with eval_mode(model), eval_mode(dense) if dense is not None else nullcontext():
        for x in examples:
            a = _with_ones(as_matrix(module, _run_until(model, layer, x, output=False)))
            gram = gram + (a.T @ a).double()
            if dense is not None:
                y = output_matrix(module, _run_until(dense, layer, x, output=True)).to(a)
                cross = cross + (a.T @ y).double()
            rows += len(a)
    return gram, (cross if dense is not None else None), rows  # type: ignore[return-value]




@torch.no_grad()
def group_statistics(model: nn.Module, layer: str, examples: list[Any], dense: nn.Module | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """`layer_statistics` of a `grouped` conv, one conv-group ``k`` at a time: ``(groups, d+1, d+1)`` Grams of
    ``A_k`` (the im2col columns of the input channels of group ``k``, ``d = in_channels / groups x kernel``, with
    the ones column) and ``(groups, d+1, out / groups)`` products with group ``k``'s dense outputs."""
    module = model.get_submodule(layer)
    groups = module.groups
    gram, cross, rows = 0, 0, 0
    with eval_mode(model), eval_mode(dense) if dense is not None else nullcontext():
        for x in examples:
            a = as_matrix(module, _run_until(model, layer, x, output=False))  # columns: group-major, as the weight's
            parts = torch.stack([_with_ones(p) for p in a.chunk(groups, 1)])  # (groups, rows, d+1)
            gram = gram + (parts.transpose(1, 2) @ parts).double()
            if dense is not None:
                y = output_matrix(module, _run_until(dense, layer, x, output=True)).to(a)
                cross = cross + (parts.transpose(1, 2) @ torch.stack(y.chunk(groups, 1))).double()
            rows += len(a)
    return gram, (cross if dense is not None else None), rows  # type: ignore[return-value]



def damped_hessian(gram: torch.Tensor) -> torch.Tensor:
    """H = 2 (X^T X + damp I), damped as the reconstruction is (so it is invertible)."""
    scale = float(gram.diagonal().mean()) or 1.0
    return 2 * (gram + DAMP * scale * torch.eye(len(gram), dtype=gram.dtype, device=gram.device))
