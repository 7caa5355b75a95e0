"""Checks for the structured-pruning exercises: deleting neurons for real, and what it saves.

Zeroing a hidden neuron's weights leaves every matrix its full size; deleting the neuron shrinks
two matrices: its row of the layer before (out_features x in_features) and its column of the
layer after. That is what makes a model faster (Li et al. 2017; Torch-Pruning, Fang et al. 2023).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from kdnb.exercises.report import FAILED, NOT_DONE, Report, as_number, attempt


def _pair(seed: int = 0) -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(seed)
    return nn.Linear(6, 8), nn.Linear(8, 3)


def shrink_linear(fn: Callable[[nn.Linear, nn.Linear, torch.Tensor], tuple[nn.Linear, nn.Linear]]) -> Report:
    """Check ``fn(fc1, fc2, keep) -> (new_fc1, new_fc2)``: keep only the hidden neurons ``keep`` between
    ``fc1`` and ``fc2`` (``fc2(relu(fc1(x)))``), with the same outputs as zeroing the other neurons."""
    report = Report("shrink_linear", checks=3)
    fc1, fc2 = _pair()
    keep = torch.tensor([0, 2, 3, 6])
    before = {k: v.clone() for k, v in [*fc1.state_dict().items(), *[("2." + k, v) for k, v in fc2.state_dict().items()]]}
    value = attempt(report, fn, fc1, fc2, keep)
    if value is NOT_DONE or value is FAILED:
        return report
    after = {k: v for k, v in [*fc1.state_dict().items(), *[("2." + k, v) for k, v in fc2.state_dict().items()]]}
    if any(not torch.equal(before[k], after[k]) or before[k].shape != after[k].shape for k in before):
        report.wrong("the original layers are untouched", "build new nn.Linear layers (or copies) instead of changing fc1 and fc2")
        return report
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(m, nn.Linear) for m in value)):
        report.wrong("returns (new_fc1, new_fc2)", f"return a pair of nn.Linear layers, got {type(value).__name__}")
        return report
    new1, new2 = value
    k = len(keep)
    if tuple(new1.weight.shape) == (k, 6):
        report.ok(f"new fc1.weight has shape {(k, 6)}: {k} neurons, each a row of (out_features x in_features)")
    else:
        hint = ("you kept columns of fc1.weight (inputs); a hidden neuron is a ROW: fc1.weight[keep]"
                if tuple(new1.weight.shape) == (8, k) else f"expected ({k}, 6): the kept rows fc1.weight[keep]")
        report.wrong(f"new fc1.weight has shape {tuple(new1.weight.shape)}", hint)
    if tuple(new2.weight.shape) == (3, k):
        report.ok(f"new fc2.weight has shape {(3, k)}: it reads only the {k} kept neurons")
    else:
        hint = ("fc2 still expects all 8 hidden neurons: keep its columns, fc2.weight[:, keep]"
                if tuple(new2.weight.shape) == (3, 8) else
                "fc2's output size must stay 3; slice its COLUMNS (inputs): fc2.weight[:, keep]")
        report.wrong(f"new fc2.weight has shape {tuple(new2.weight.shape)}", hint)
    if report.failures:
        return report
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mask = torch.zeros(8)
        mask[keep] = 1
        expected = fc2(torch.relu(fc1(x)) * mask)
        got = new2(torch.relu(new1(x)))
    if torch.allclose(got, expected, atol=1e-5):
        report.ok("outputs equal those of the full network with the other neurons zeroed")
    elif new1.bias is None or not torch.equal(new1.bias.detach(), fc1.bias.detach()[keep]):
        report.wrong("outputs match the masked network", "each kept neuron keeps its bias: new_fc1.bias = fc1.bias[keep]")
    elif new2.bias is None or not torch.equal(new2.bias.detach(), fc2.bias.detach()):
        report.wrong("outputs match the masked network", "fc2's outputs are unchanged, so its bias stays whole: new_fc2.bias = fc2.bias")
    else:
        report.wrong("outputs match the masked network", "the kept rows/columns must be in the order of keep: fc1.weight[keep], fc2.weight[:, keep]")
    return report


def mlp_macs(fn: Callable[[Sequence[int]], int]) -> Report:
    """Check ``fn(widths) -> MACs``: multiply-accumulates per sample of an MLP with layer widths
    ``[in, hidden..., out]``: sum over layers of in_features * out_features (biases are adds, not MACs),
    the count `kdnb.measure` reports."""
    report = Report("mlp_macs", checks=3)
    for widths in ([64, 256, 256, 10], [64, 32, 10], [40, 100]):
        what = f"mlp_macs({widths})"
        value = attempt(report, fn, list(widths))
        if value is NOT_DONE:
            return report
        if value is FAILED:
            continue
        mine = as_number(value)
        expected = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
        if mine is None:
            report.wrong(what, f"return a number, got {type(value).__name__}")
        elif mine == expected:
            report.ok(f"{what} = {expected:,}")
        elif mine == expected + sum(widths[1:]):
            report.wrong(what, "you counted the biases: a bias is an addition, not a multiply-accumulate; count in * out per layer")
        elif mine == 2 * expected:
            report.wrong(what, "that is FLOPs (a multiply and an add each): MACs count each multiply-add once")
        elif mine == sum(widths) or mine == sum(a * b for a, b in zip(widths, widths[2:])):
            report.wrong(what, "each layer connects consecutive widths: sum of widths[i] * widths[i + 1]")
        else:
            report.wrong(what, f"got {mine:,.0f}, expected {expected:,}: sum of in_features * out_features over the layers")
    return report
