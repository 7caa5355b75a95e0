"""Pruning by masks, with ``torch.nn.utils.prune``: each masked parameter ``w`` becomes ``w_orig * w_mask``
on every forward. Gradients reach ``w_orig`` through the mask, so pruned entries get zero gradient and
stay pruned through fine-tuning. `make_permanent` folds the masks into plain parameters: the model is then
an ordinary model with zeros, as fast as the dense one (the mask multiply costs ~30 % on CPU).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize, prune


def _owner(model: nn.Module, param: str) -> tuple[nn.Module, str]:
    module_name, _, attr = param.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Mask ``model``'s parameters in place (``{"0.weight": bool mask}``, True = kept).

    A parameter masked already gets the new mask (its pruned entries are expected to stay pruned);
    others get ``torch.nn.utils.prune.custom_from_mask``.
    """
    for param, mask in _tied_consistent(model, masks).items():
        module, attr = _owner(model, param)
        current = getattr(module, attr + "_mask", None)
        if isinstance(current, torch.Tensor):
            current.copy_(mask.to(current))
        else:
            prune.custom_from_mask(module, attr, mask.to(getattr(module, attr).device))
    return model


def _tied_consistent(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One mask for a weight that several layers share (tied), under every one of its names: what any of its
    names prunes, all of them do (sparsity counts such a weight once, under its first name)."""
    by_tensor: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for attr in {p.rsplit(".", 1)[-1] for p in masks}:
            held = getattr(module, attr + "_orig", None) if hasattr(module, attr + "_orig") else \
                getattr(module, attr, None)
            if isinstance(held, torch.Tensor):
                by_tensor.setdefault(id(held), []).append(f"{name}.{attr}" if name else attr)
    consistent = dict(masks)
    for names in by_tensor.values():
        given = [masks[n] for n in names if n in masks]
        if given and len(names) > 1:
            joint = torch.stack([m.to(given[0].device) for m in given]).all(0)
            consistent.update({n: joint for n in names})
    return consistent


def clone(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on masked models (whose masked weights are not graph leaves)."""
    memo: dict[int, object] = {}
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                masked = getattr(module, hook._tensor_name)
                memo[id(masked)] = masked.detach().clone()
    twin = copy.deepcopy(model, memo)
    for module in twin.modules():  # a parametrized module's class is made for it alone: give the copy its own,
        if parametrize.is_parametrized(module):  # or folding the copy (make_permanent) breaks the original
            kind = type(module)
            module.__class__ = type(kind.__name__, kind.__bases__, dict(vars(kind)))
    return twin


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks in force in ``model``, by parameter name (True = kept)."""
    found = {}
    for name, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                param = f"{name}.{hook._tensor_name}" if name else hook._tensor_name
                found[param] = getattr(module, hook._tensor_name + "_mask").detach().bool().cpu()
    return found


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every mask (``torch.nn.utils.prune``) and parametrization into plain parameters, in place.

    The pruned entries become stored zeros and the forward pre-hooks are gone, so inference runs at
    dense speed. Returns ``model``. Models without masks are returned unchanged.
    """
    for module in list(model.modules()):
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model
