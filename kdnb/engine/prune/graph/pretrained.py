"""Reload a structurally pruned transformers model that its library's ``from_pretrained`` cannot rebuild.

``from_pretrained`` builds every layer from one config: it reloads a pruned model only when every layer kept the
same heads and MLP width and the head width still follows from the config (`library.reload_problem` says which).
Otherwise `from_pretrained` here builds the library's model at the sizes it had before pruning (the config's
``kdnb_built_from``), narrows each layer to the saved weights' shapes, and loads them: the library's own class,
forward and ``save_pretrained``, at the pruned sizes.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kdnb.errors import KdnbError
from kdnb.engine.prune.graph import library
from kdnb.engine.prune.graph.groups import attention_layers, update_heads


def from_pretrained(model_class: type, directory: str | Path) -> nn.Module:
    """``model_class`` (e.g. ``transformers.BertForSequenceClassification``) from ``directory``, written by
    ``save_pretrained`` after a structured prune, at its pruned sizes (per layer where they differ)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = model_class.config_class.from_pretrained(directory)
    if library.reload_problem_of(model_class, config) is None:
        return model_class.from_pretrained(directory)
    built_from = getattr(config, library.BUILT_FROM_KEY, None)
    if not built_from:
        raise KdnbError(f"{directory} holds no sizes kdnb pruned from (config.{library.BUILT_FROM_KEY}); reload it "
                        f"with {model_class.__name__}.from_pretrained")
    skeleton_config = model_class.config_class.from_dict({**config.to_dict(), **built_from})
    model = model_class(skeleton_config)
    state: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        state.update(load_file(file))
    for name, tensor in state.items():
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(tensor, requires_grad=module._parameters[attr].requires_grad)
        elif attr in module._buffers:
            module._buffers[attr] = tensor
    for module in model.modules():
        _narrow_attributes(module)
    layouts, _ = attention_layers(model)
    update_heads(layouts)
    model.config = config
    library.sync_config(model)
    model.tie_weights()
    return model.eval()


def _narrow_attributes(module: nn.Module) -> None:
    """A layer's size attributes from its (loaded) weight."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = weight.shape
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = tuple(weight.shape)
    elif isinstance(module, nn.GroupNorm):
        module.num_channels = weight.shape[0]
        module.num_groups = min(module.num_groups, module.num_channels)
    elif isinstance(module, nn.modules.conv._ConvNd):
        module.out_channels = weight.shape[0]
        module.in_channels = weight.shape[1] * module.groups
    elif type(module).__name__ == "Conv1D":
        module.nx, module.nf = weight.shape
