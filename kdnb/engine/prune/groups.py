"""Coupled channels, found by Torch-Pruning's DependencyGraph, as plain data.

Deleting output channel ``c`` of a layer also deletes row ``c`` of its BatchNorm, column ``c`` of the
next layer, and the matching channel of every branch added to it (residuals) or depthwise-convolved
after it. Torch-Pruning traces those couplings; here each coupled group becomes a `ChannelGroup`: the
list of tensor slices (parameter, dimension, positions) that every channel owns. Scoring a channel
(sum of its slices' scores), counting the weights it takes along, and masking it are then simple
tensor indexing, independent of the graph; `kdnb.engine.prune.structured` deletes them with the graph.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from kdnb.engine.errors import KdnbError

PRUNABLE = (nn.Linear, nn.modules.conv._ConvNd)  # layers whose weights count towards sparsity
_BATCHNORM = nn.modules.batchnorm._BatchNorm
STRUCTURED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, _BATCHNORM)


@dataclass
class Slice:
    """Positions ``index`` along dimension ``dim`` of parameter ``param``; ``channel[i]`` is the
    channel of the group that owns position ``index[i]`` (a Flatten maps one channel to many)."""

    param: str
    dim: int
    index: torch.Tensor
    channel: torch.Tensor


@dataclass
class ChannelGroup:
    """The ``size`` output channels of layer ``root`` and everything coupled to them."""

    root: str
    size: int
    slices: list[Slice] = field(default_factory=list)


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights that count towards sparsity: those of every Linear and Conv layer, by name."""
    weights = {f"{name}.weight" if name else "weight": module.weight
               for name, module in model.named_modules()
               if isinstance(module, PRUNABLE) and isinstance(getattr(module, "weight", None), torch.Tensor)}
    if not weights:
        raise KdnbError(f"{type(model).__name__} has no prunable layers: pruning removes weights of "
                        "nn.Linear and nn.Conv1d/2d/3d layers, and it has none")
    return weights


def check_structured_support(model: nn.Module) -> None:
    """A clear error naming the first layer structured pruning cannot resize."""
    for name, module in model.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        supported = isinstance(module, STRUCTURED_LAYERS)
        if isinstance(module, nn.modules.conv._ConvNd):
            supported = supported and module.groups in (1, module.in_channels) and not module.transposed
        if not supported:
            detail = f"groups={module.groups}" if isinstance(module, nn.modules.conv._ConvNd) else ""
            raise KdnbError(f"structured pruning does not support layer {name or '(model)'!r} "
                            f"({type(module).__name__}{' ' + detail if detail else ''}); it resizes Linear, "
                            "Conv (plain or depthwise) and BatchNorm layers -- use structured=False for this model")


def dependency_graph(model: nn.Module, example: torch.Tensor):  # -> tp.DependencyGraph
    """Torch-Pruning's graph of ``model``, traced on ``example``; tracing errors become one line.

    The graph also records, as ``input_coupled``, the nodes that combine the model's input itself with
    features (e.g. a residual add with an identity shortcut from the input): those channels cannot go.
    """
    import torch_pruning as tp

    check_structured_support(model)
    was_training = model.training
    x = example.detach().clone().requires_grad_(True)  # so ops reading the input show it in the graph
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=x, forward_fn=lambda m, v: m(v),
                                                          verbose=False)
    except (RuntimeError, TypeError, ValueError, AssertionError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise KdnbError(f"structured pruning could not trace the model on an input of shape "
                        f"{tuple(example.shape)}: {first}") from None
    finally:
        model.train(was_training)
    graph.input_coupled = {node for node in graph.module2node.values()
                           if not isinstance(node.module, STRUCTURED_LAYERS) and node.grad_fn is not None
                           and any(getattr(f, "variable", None) is x for f, _ in node.grad_fn.next_functions)}
    return graph


def output_layers(graph) -> set[nn.Module]:
    """The layers whose output channels are the model's outputs (the classifier): never pruned."""
    found: set[nn.Module] = set()
    stack = [node for node in graph.module2node.values() if not node.outputs]
    seen = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if isinstance(node.module, STRUCTURED_LAYERS):
            found.add(node.module)
        else:
            stack.extend(node.inputs)
    return found


def _param_slices(name: str, module: nn.Module, is_out: bool) -> Iterator[tuple[str, int]]:
    prefix = f"{name}." if name else ""
    if isinstance(module, _BATCHNORM):
        if module.affine:
            yield prefix + "weight", 0
            yield prefix + "bias", 0
        return
    depthwise = isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
    if is_out or depthwise:  # a depthwise conv's input channel is its output channel: dim 0
        yield prefix + "weight", 0
        if module.bias is not None:
            yield prefix + "bias", 0
    else:
        yield prefix + "weight", 1


def channel_groups(model: nn.Module, graph) -> list[ChannelGroup]:
    """Every group of coupled channels that may be pruned: not the model's outputs, nor channels added to
    the model's input."""
    names = {module: name for name, module in model.named_modules()}
    outputs = output_layers(graph)
    groups = []
    for group in graph.get_all_groups(root_module_types=PRUNABLE):
        root = group[0].dep.target.module
        if any(item.dep.target.module in outputs and graph.is_out_channel_pruning_fn(item.dep.handler)
               or item.dep.target in graph.input_coupled for item in group):
            continue
        slices: dict[tuple[str, int], Slice] = {}
        for item in group:
            module = item.dep.target.module
            if module not in names or None in item.root_idxs:
                continue  # graph-internal ops (add, reshape) own no parameters
            is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
            for param, dim in _param_slices(names[module], module, is_out):
                slices.setdefault((param, dim), Slice(param, dim, torch.tensor(item.idxs, dtype=torch.long),
                                                      torch.tensor(item.root_idxs, dtype=torch.long)))
        groups.append(ChannelGroup(names[root], graph.get_out_channels(root), list(slices.values())))
    return groups


def channel_scores(group: ChannelGroup, saliency: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Score of each channel: the sum of the element scores of every slice it owns
    (None when the criterion scores none of the group's parameters)."""
    total = torch.zeros(group.size, dtype=torch.float64)
    scored = False
    for s in group.slices:
        if s.param not in saliency:
            continue
        values = saliency[s.param].detach().double().cpu().index_select(s.dim, s.index)
        total.scatter_add_(0, s.channel, values.movedim(s.dim, 0).reshape(len(s.index), -1).sum(1))
        scored = True
    return total if scored else None


def keep_vectors(groups: list[ChannelGroup], removed: dict[str, torch.Tensor],
                 shapes: dict[str, torch.Size]) -> dict[tuple[str, int], torch.Tensor]:
    """For each (parameter, dim) a removed channel touches: which positions along dim survive."""
    keep: dict[tuple[str, int], torch.Tensor] = {}
    for group in groups:
        gone = removed.get(group.root)
        if gone is None or not bool(gone.any()):
            continue
        for s in group.slices:
            vector = keep.setdefault((s.param, s.dim), torch.ones(shapes[s.param][s.dim], dtype=torch.bool))
            vector[s.index[gone[s.channel]]] = False
    return keep


def remaining_weights(keep: dict[tuple[str, int], torch.Tensor], shapes: dict[str, torch.Size],
                      weights: list[str]) -> int:
    """How many elements of ``weights`` survive the removal described by ``keep``."""
    total = 0
    for param in weights:
        shape = list(shapes[param])
        for dim in range(len(shape)):
            vector = keep.get((param, dim))
            if vector is not None:
                shape[dim] = int(vector.sum())
        total += int(torch.Size(shape).numel())
    return total


def masks_from_keep(keep: dict[tuple[str, int], torch.Tensor],
                    shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Full-shape boolean masks (True = kept) of every parameter a removal touches."""
    masks: dict[str, torch.Tensor] = {}
    for (param, dim), vector in keep.items():
        view = [1] * len(shapes[param])
        view[dim] = -1
        mask = masks.get(param, torch.ones(shapes[param], dtype=torch.bool))
        masks[param] = mask & vector.view(view)
    return masks
