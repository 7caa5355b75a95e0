"""Pruning by masks, with ``torch.nn.utils.prune``: each masked parameter ``w`` becomes ``w_orig * w_mask``
on every forward. Gradients reach ``w_orig`` through the mask, so pruned entries get zero gradient and
stay pruned through fine-tuning. `make_permanent` folds the masks into plain parameters: the model is then
an ordinary model with zeros, as fast as the dense one (the mask multiply costs time: bench/prune_speed.py).
`on_path` and `connected` keep a mask's weights on input-output paths (the one-shot OBS prune uses them).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from kdnb.engine.prune.graph.groups import ChannelGroup, channel_scores, keep_vectors, masks_from_keep, prunable_weights
from kdnb.engine.prune.score.criteria import lamp_normalise
from kdnb.engine.prune.score.scores import Scores


def _owner(model: nn.Module, param: str) -> tuple[nn.Module, str]:
    module_name, _, attr = param.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Mask ``model``'s parameters in place (``{"0.weight": bool mask}``, True = kept).

    A parameter masked already gets the new mask in place of its old one (the sparsity explorer moves both
    ways; `prune` passes masks that keep every entry masked before it started pruned: masks only grow);
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


def mask_sparsity(model: nn.Module) -> float:
    """The fraction of ``model``'s prunable weights that masks (torch.nn.utils.prune's, kdnb's) hold at zero."""
    masks = current_masks(model)
    weights = prunable_weights(model)
    masked = sum(int((~masks[name]).sum()) for name in weights if name in masks)
    return masked / sum(w.numel() for w in weights.values())


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


def _units(masks: dict[str, torch.Tensor], group: ChannelGroup, consumer: bool) -> torch.Tensor:
    """Kept weights of each unit of ``group`` on its producing side (its incoming weights) or consuming side
    (the next layers' weights that read it), counted over the masked weights."""
    slices = [s for s in group.slices if s.consumer == consumer and s.param in masks]
    side = ChannelGroup(group.root, group.size, slices)
    counts = channel_scores(side, {name: mask.double() for name, mask in masks.items()})
    return counts if counts is not None else torch.full((group.size,), float("inf"), dtype=torch.float64)


def _dead(masks: dict[str, torch.Tensor], groups: list[ChannelGroup]) -> dict[str, torch.Tensor]:
    """The units of each group with no kept incoming weight or no kept weight reading them."""
    return {g.root: (_units(masks, g, False) == 0) | (_units(masks, g, True) == 0) for g in groups}


def _release(masks: dict[str, torch.Tensor], groups: list[ChannelGroup], dead: dict[str, torch.Tensor]
             ) -> dict[str, torch.Tensor]:
    """``masks`` without any weight into or out of a ``dead`` unit."""
    owned = [ChannelGroup(g.root, g.size, [s for s in g.slices if s.param in masks], g.units) for g in groups]
    cut = masks_from_keep(keep_vectors(owned, dead, {n: m.shape for n, m in masks.items()}),
                          {n: m.shape for n, m in masks.items()})
    return {name: mask & cut[name].to(mask.device) if name in cut else mask for name, mask in masks.items()}


def on_path(masks: dict[str, torch.Tensor], groups: list[ChannelGroup]) -> dict[str, torch.Tensor]:
    """Only the kept weights that lie on a path from the model's input to its output.

    A unit (a neuron or channel of a `ChannelGroup`) with no kept incoming weight, or whose output no kept
    weight reads, contributes nothing the next layers could not get from their biases, so its weights are
    released (Vysogorets & Kempe 2023, "Connectivity Matters: Neural Network Pruning Through the Lens of
    Effective Sparsity"); releasing can strand further units, so it is repeated until none is left. A
    release that would empty a layer is not made (a layer keeps at least one weight)."""
    while True:
        released = _release(masks, groups, _dead(masks, groups))
        if all(bool((released[n] == masks[n]).all()) for n in masks):
            return masks
        if any(bool(masks[n].any()) and not bool(released[n].any()) for n in masks):
            return masks
        masks = released


def connected(masks: dict[str, torch.Tensor], values: dict[str, torch.Tensor], groups: list[ChannelGroup]
              ) -> dict[str, torch.Tensor]:
    """``masks`` with every kept weight on an input-output path (`on_path`), the same number of weights kept.

    The weights `on_path` releases go back to the budget: it refills with the highest ``values`` (scores
    comparable across layers; ``-inf`` for what must stay pruned) among the weights between live units, which
    are on a path by construction."""
    kept = on_path(masks, groups)
    deficit = sum(int(m.sum()) for m in masks.values()) - sum(int(m.sum()) for m in kept.values())
    if deficit <= 0:
        return kept
    live = _release({n: torch.ones_like(m) for n, m in kept.items()}, groups, _dead(kept, groups))
    names = list(kept)
    candidates = torch.cat([values[n].detach().cpu().double().masked_fill(~live[n].cpu() | kept[n].cpu(),
                                                                        float("-inf")).flatten() for n in names])
    count = min(deficit, int((candidates > float("-inf")).sum()))
    added = torch.zeros_like(candidates, dtype=torch.bool)
    added[torch.topk(candidates, count).indices] = True
    return {n: kept[n] | a.view_as(kept[n]).to(kept[n].device)
            for n, a in zip(names, added.split([kept[n].numel() for n in names]))}


def comparable(scores: Scores, pruned: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A `Scores`' weight scores made comparable across layers as `masks_at` ranks a layer-wise criterion
    (`kdnb.engine.prune.score.criteria.lamp_normalise`), ``-inf`` where ``pruned`` removed them."""
    values = {n: lamp_normalise(s.detach().cpu().double().clamp_min(0)) for n, s in scores.weights.items()}
    return {n: v.masked_fill(~pruned[n].cpu(), float("-inf")) if n in pruned else v for n, v in values.items()}
