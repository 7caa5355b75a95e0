"""Physical removal of channels with Torch-Pruning, and BatchNorm folding for inference export.

`remove_channels` deletes the chosen channels of each coupled group: Torch-Pruning's
``DependencyGraph.get_pruning_group(layer, prune_out_channels, idxs).prune()`` resizes the layer, its
BatchNorm, the next layers' inputs, the other branches of residual adds and depthwise convs, together.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kdnb.errors import KdnbError
from kdnb.engine.device import eval_mode
from kdnb.engine.prune.graph.groups import (attention_layers, channel_groups, delete_channels, dependency_graph,
                                      grouped_attention, update_heads)


@torch.no_grad()
def _outputs(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    with eval_mode(model):
        return model(example)


def remove_channels(model: nn.Module, removed: dict[str, torch.Tensor], example: torch.Tensor,
                    progress: Callable[[int, int], None] | None = None) -> nn.Module:
    """Delete, in place, the units ``removed[layer]`` (True = remove) of each group rooted at ``layer`` (a unit is
    a channel, or the channels that go together: one position of every group of a grouped conv, one head).

    The model must carry no masks (see `make_permanent`). Hand-written attention modules get their
    ``num_heads`` updated (`groups.update_heads`). Afterwards the model's outputs on ``example`` must keep
    their shape and be finite, or a `KdnbError` says so.
    """
    expected = _outputs(model, example).shape
    graph = dependency_graph(model, example)
    units = {group.root: group.units for group in channel_groups(model, graph)}
    layouts, _ = attention_layers(model)
    grouped = grouped_attention(layouts)  # GQA: whole key/value groups
    ties = _tied_parameters(model)
    for done, (root, gone) in enumerate(removed.items()):
        if progress is not None:  # ``progress(done, groups)`` before each group and after the last
            progress(done, len(removed))
        if units.get(root) is not None:
            gone = gone[units[root]]  # unit -> its channels
        idxs = torch.nonzero(gone).flatten().tolist()
        if not idxs:
            continue
        try:
            delete_channels(graph, model.get_submodule(root), idxs, grouped)
        except (RuntimeError, ValueError, AssertionError, ZeroDivisionError, IndexError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise KdnbError(f"structured pruning could not remove channels of layer {root!r} ({first}); "
                            "use structured=False for this model") from None
    update_heads(layouts)
    _tie_again(ties)
    _check_outputs(model, example, expected)
    if progress is not None:
        progress(len(removed), len(removed))
    return model


def _tied_parameters(model: nn.Module) -> list[list[tuple[str, nn.Module, str]]]:
    """(path, module, attribute) of each holder of a Parameter held more than once (tied weights, such as a
    language model's embedding and output layer)."""
    users: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for path, module in model.named_modules():
        for attr, param in module._parameters.items():
            if param is not None:
                users.setdefault(id(param), []).append((path, module, attr))
    return [holders for holders in users.values() if len(holders) > 1]


def _tie_again(ties: list[list[tuple[str, nn.Module, str]]]) -> None:
    """Torch-Pruning narrows each holder of a tied Parameter on its own, into a new Parameter each: make them
    one Parameter again. They lost the same positions, so their values agree; if not, a one-line error."""
    for (path, module, attr), *others in ties:
        kept = getattr(module, attr)
        for other_path, other, other_attr in others:
            value = getattr(other, other_attr)
            if value.shape != kept.shape or not torch.equal(value, kept):
                raise KdnbError(f"structured pruning removed different channels from the tied parameters "
                                f"{path}.{attr} {tuple(kept.shape)} and {other_path}.{other_attr} "
                                f"{tuple(value.shape)} (one Parameter); untie them or use structured=False")
            setattr(other, other_attr, kept)


def _check_outputs(model: nn.Module, example: torch.Tensor, expected: torch.Size) -> None:
    names = {module: name for name, module in model.named_modules()}
    where = {"module": None}

    def remember(module, args):  # the innermost layer running when the model broke
        where["module"] = names.get(module)

    handles = [m.register_forward_pre_hook(remember) for m in model.modules() if not list(m.children())]
    try:
        out = _outputs(model, example)
    except RuntimeError as error:
        first = (str(error).strip().splitlines() or ["RuntimeError"])[0]
        raise KdnbError(f"structured pruning broke the model at layer {where['module']!r} ({first}); a reshape "
                        "there fixes the channel count (a channel shuffle, heads?) -- use structured=False") from None
    finally:
        for handle in handles:
            handle.remove()
    if out.shape != expected or not bool(torch.isfinite(out).all()):
        raise KdnbError(f"structured pruning broke the model: outputs {tuple(out.shape)} (expected "
                        f"{tuple(expected)}), finite={bool(torch.isfinite(out).all())}; use structured=False")


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold each BatchNorm that directly follows a Conv or Linear (in the same ``nn.Sequential``) into it, in
    place, and put the model in eval mode: ``w' = w * gamma / sqrt(var + eps)``,
    ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``. The BatchNorm becomes ``nn.Identity``.

    Inference export only: the folded model computes the eval-mode function with one pass less per layer,
    and can no longer train its BatchNorm statistics.
    """
    model.eval()
    for container in model.modules():
        if not isinstance(container, nn.Sequential):
            continue
        names = list(container._modules)
        for first, second in zip(names, names[1:]):
            layer, norm = container._modules[first], container._modules[second]
            if not (isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.track_running_stats
                    and isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd))
                    and not getattr(layer, "transposed", False)
                    and _channels(layer) == norm.num_features):
                continue
            scale = (norm.running_var + norm.eps).rsqrt()
            if norm.affine:
                scale = scale * norm.weight
            shift = -norm.running_mean * scale + (norm.bias if norm.affine else 0.0)
            bias = layer.bias if layer.bias is not None else torch.zeros_like(norm.running_mean)
            layer.weight.mul_(scale.view(-1, *[1] * (layer.weight.dim() - 1)))
            layer.bias = nn.Parameter(bias * scale + shift)
            container._modules[second] = nn.Identity()
    return model


def _channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
