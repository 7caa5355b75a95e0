"""Reload a structurally pruned transformers model that its library's ``from_pretrained`` cannot rebuild.

``from_pretrained`` builds every layer from one config: it reloads a pruned model only when every layer kept the
same heads and MLP width and the head width still follows from the config (`library.reload_problem` says which).
Otherwise `from_pretrained` here builds the library's model at the sizes it had before pruning (the config's
``kdnb_built_from``), narrows each layer to the saved weights' shapes, and loads them: the library's own class,
forward and ``save_pretrained``, at the pruned sizes.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from kdnb.engine.prune.graph import library
from kdnb.engine.prune.graph.groups import attention_layers, update_heads


def from_pretrained(model_class: type, directory: str | Path) -> nn.Module:
    """``model_class`` (e.g. ``transformers.BertForSequenceClassification``) from ``directory``, written by
    ``save_pretrained`` after a structured prune, at its pruned sizes (per layer where they differ)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    saved = json.loads((directory / "config.json").read_text())
    built_from = saved.get(library.BUILT_FROM_KEY)
    if not built_from:
        return model_class.from_pretrained(directory)  # not pruned by kdnb: the library's own loader
    try:
        if library.reload_problem_of(model_class, model_class.config_class.from_pretrained(directory)) is None:
            return model_class.from_pretrained(directory)
    except ValueError:  # its config refuses the pruned sizes (LLaMA's: hidden size a multiple of the heads)
        pass
    # the sizes before pruning: a config the library validates and a model it builds, narrowed below
    skeleton_config = model_class.config_class.from_dict({**saved, **built_from})
    model = model_class(skeleton_config)
    state: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        state.update(load_file(file))
    names = _saved_names(model)
    for key, tensor in state.items():
        module_name, _, attr = _weight_norm_name(names.get(key, key)).rpartition(".")
        module = model.get_submodule(module_name)
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(tensor, requires_grad=module._parameters[attr].requires_grad)
        elif attr in module._buffers:
            module._buffers[attr] = tensor
    for module in model.modules():
        _narrow_attributes(module)
    layouts, _ = attention_layers(model)
    update_heads(layouts)
    library.sync_config(model)  # the skeleton's config takes the sizes of the weights
    model.tie_weights()
    return model.eval()


def _saved_names(model: nn.Module) -> dict[str, str]:
    """``{name in the checkpoint: name in the model}``: transformers 5 saves some families under their
    earlier names (ViT's ``encoder.layer.N.attention.attention.query``); its own reverse renaming, followed tensor
    by tensor. Tensors it merges or splits keep their names (they are not narrowed here)."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4 saves under the modules' names
        return {}
    state = model.state_dict()
    by_tensor = {id(tensor): name for name, tensor in state.items()}
    reverted = revert_weight_conversion(model, dict(state))
    return {saved: by_tensor[id(tensor)] for saved, tensor in reverted.items() if id(tensor) in by_tensor}


def _weight_norm_name(name: str) -> str:
    """torch's weight norm saved under its legacy names (``weight_g``, ``weight_v``: Wav2Vec2's positional conv) as
    the parametrization's (``parametrizations.weight.original0`` / ``original1``)."""
    for legacy, original in (("weight_g", "original0"), ("weight_v", "original1")):
        if name.endswith("." + legacy):
            return f"{name[:-len(legacy)]}parametrizations.weight.{original}"
    return name


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
