"""Physical removal of channels with Torch-Pruning, and BatchNorm folding for inference export.

`remove_channels` deletes the chosen channels of each coupled group: Torch-Pruning's
``DependencyGraph.get_pruning_group(layer, prune_out_channels, idxs).prune()`` resizes the layer, its
BatchNorm, the next layers' inputs, the other branches of residual adds and depthwise convs, together.
"""
from __future__ import annotations

import torch
from torch import nn

from kdnb.errors import KdnbError
from kdnb.engine.evaluate import eval_mode
from kdnb.engine.prune.groups import attention_layers, channel_groups, dependency_graph


@torch.no_grad()
def _outputs(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    with eval_mode(model):
        return model(example)


def remove_channels(model: nn.Module, removed: dict[str, torch.Tensor], example: torch.Tensor) -> nn.Module:
    """Delete, in place, the units ``removed[layer]`` (True = remove) of each group rooted at ``layer`` (a unit is
    a channel, or the channels that go together: one position of every group of a grouped conv, one head).

    The model must carry no masks (see `make_permanent`). Hand-written attention modules get their
    ``num_heads`` (and a plain ``head_dim``) updated. Afterwards the model's outputs on ``example`` must keep
    their shape and be finite, or a `KdnbError` says so.
    """
    expected = _outputs(model, example).shape
    graph = dependency_graph(model, example)
    units = {group.root: group.units for group in channel_groups(model, graph)}
    fused, _ = attention_layers(model)
    head_dims = {qkv: qkv.out_features // (3 * heads) for qkv, heads in fused.items()}
    for root, gone in removed.items():
        if units.get(root) is not None:
            gone = gone[units[root]]  # unit -> its channels
        idxs = torch.nonzero(gone).flatten().tolist()
        if not idxs:
            continue
        layer = model.get_submodule(root)
        try:
            group = graph.get_pruning_group(layer, graph.get_pruner_of_module(layer).prune_out_channels, idxs)
            group.prune()
        except (RuntimeError, ValueError, AssertionError, ZeroDivisionError, IndexError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise KdnbError(f"structured pruning could not remove channels of layer {root!r} ({first}); "
                            "use structured=False for this model") from None
    _update_heads(model, head_dims)
    _check_outputs(model, example, expected)
    return model


def _update_heads(model: nn.Module, head_dims: dict[nn.Module, int]) -> None:
    """Whole heads went from each fused qkv: its attention module's ``num_heads`` follows."""
    for module in model.modules():
        qkv = next((child for child in module.children() if child in head_dims), None)
        if qkv is None:
            continue
        module.num_heads = qkv.out_features // (3 * head_dims[qkv])
        if "head_dim" in vars(module):  # a plain attribute (a property follows by itself)
            module.head_dim = head_dims[qkv]


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
