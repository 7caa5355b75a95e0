"""Models as a library builds them (HuggingFace ``transformers``): what structured pruning must know of them, and
their configs kept true after channels go, so the pruned model runs, ``save_pretrained`` writes it and
``from_pretrained`` rebuilds it.

Nothing here imports ``transformers``: a model is recognised by its ``config.model_type`` and by the modules it
holds, and the library's version is read only when one of its models is pruned (``import kdnb`` stays light).

- `check_known`: a transformers model of a family or a major version these layouts were not checked against is
  refused before anything changes (never a half-pruned model).
- `as_linears` / `restore_modules`: GPT-2's ``Conv1D`` (a Linear with its weight stored transposed) runs as
  ``nn.Linear`` while kdnb scores, masks and deletes, so every criterion and Torch-Pruning's pruners see a plain
  Linear; it goes back to ``Conv1D`` (masks transposed with it) before the model is returned.
- `head_count`: the heads of an attention module that keeps no count of them (LLaMA's reads ``head_dim`` only).
- `sync_config`: hidden size, heads, key/value heads, MLP width (and Wav2Vec2's conv widths) written back
  into the config from the weights; `reload_problem` says whether ``from_pretrained`` can rebuild the result.
"""
from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from kdnb.errors import KdnbError

KNOWN_MAJOR_VERSIONS = (4, 5)  # transformers versions whose module layouts below were checked (5.25 tested)


@dataclass(frozen=True)
class Family:
    """Where a family keeps its sizes: the config keys (through the config's ``attribute_map``) and the names of
    the layers that show them. ``whole_heads``: the heads are tied across layers (T5's shared relative position
    bias), so they stay whole."""

    intermediate_key: str  # the config key of the MLP width
    up: tuple[str, ...]  # the MLP's first layers (their outputs are the MLP width)
    query: str  # the query projection, inside each attention module (a fused qkv: "c_attn")
    key: str | None = None  # the key projection, for grouped-query attention's key/value heads
    head_dim_key: str | None = None  # a config key that fixes the head width apart from hidden_size
    whole_heads: bool = False


_BERT = Family("intermediate_size", ("intermediate.dense",), "query")
_VIT = Family("intermediate_size", ("mlp.fc1", "intermediate.dense"), "q_proj")  # transformers 5 names
FAMILIES: dict[str, Family] = {
    "bert": _BERT, "roberta": _BERT, "vit": _VIT, "deit": _VIT,
    "distilbert": Family("hidden_dim", ("ffn.lin1",), "q_lin"),
    "gpt2": Family("n_inner", ("mlp.c_fc",), "c_attn"),
    "llama": Family("intermediate_size", ("mlp.gate_proj", "mlp.up_proj"), "q_proj", "k_proj", "head_dim"),
    "mistral": Family("intermediate_size", ("mlp.gate_proj", "mlp.up_proj"), "q_proj", "k_proj", "head_dim"),
    "qwen2": Family("intermediate_size", ("mlp.gate_proj", "mlp.up_proj"), "q_proj", "k_proj", "head_dim"),
    "wav2vec2": Family("intermediate_size", ("feed_forward.intermediate_dense",), "q_proj"),
    "t5": Family("d_ff", ("DenseReluDense.wi", "DenseReluDense.wi_0", "DenseReluDense.wi_1"), "q",
                 whole_heads=True),
}
# The layer whose output width is the model's hidden size (the residual stream), by the end of its name.
_HIDDEN_LAYERS = ("embeddings.word_embeddings", "wte", "embed_tokens", "shared", "distilbert.embeddings.word_embeddings",
                  "embeddings.patch_embeddings.projection", "feature_projection.projection")
_LAYERS_KEY = "kdnb_layers"  # per-layer sizes kdnb writes into the config when layers differ
BUILT_FROM_KEY = "kdnb_built_from"  # the sizes the library builds the skeleton with, before `pretrained` narrows it
_SIZE_KEYS = ("hidden_size", "num_attention_heads", "num_key_value_heads")
SIZES_KEY = "kdnb_sizes"  # the true sizes, where the config class refuses them (`_keep_valid`)


def family_of(model: nn.Module) -> Family | None:
    """The `Family` of a transformers model (None for any other model)."""
    config = getattr(model, "config", None)
    return FAMILIES.get(getattr(config, "model_type", None)) if _is_transformers(model) else None


def _is_transformers(model: nn.Module) -> bool:
    module = sys.modules.get("transformers")
    return module is not None and isinstance(model, module.PreTrainedModel)


def transformers_version() -> str:
    """The version of the transformers that built the model (already imported: the model is one of its)."""
    return sys.modules["transformers"].__version__


def check_known(model: nn.Module) -> None:
    """Refuse, in one line, a transformers model whose family or library version kdnb's layouts do not know:
    structured pruning would cut heads or widths its config cannot then describe."""
    if not _is_transformers(model):
        return
    version = transformers_version()
    major = int(version.split(".")[0])
    model_type = getattr(model.config, "model_type", None)
    if major not in KNOWN_MAJOR_VERSIONS:
        raise KdnbError(f"structured pruning knows transformers {', '.join(map(str, KNOWN_MAJOR_VERSIONS))}.x, "
                        f"not {version}: its modules may keep sizes kdnb does not update -- install transformers "
                        f"<{KNOWN_MAJOR_VERSIONS[-1] + 1}, or use structured=False")
    if model_type not in FAMILIES:
        raise KdnbError(f"structured pruning does not know the transformers family {model_type!r} "
                        f"({type(model).__name__}): it keeps the configs of {', '.join(sorted(FAMILIES))} true -- "
                        "use structured=False for this model")


def tracing_example(model: nn.Module, example):
    """The example Torch-Pruning traces: a transformers model's mapping with ``use_cache=False``, since the cache's
    concatenation of past and new keys (GPT-2) is a concat the graph cannot size."""
    if family_of(model) is not None and isinstance(example, Mapping) and "use_cache" not in example \
            and getattr(model.config, "use_cache", None) is not None:
        return {**example, "use_cache": False}
    return example


def _conv1d_class() -> type | None:
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None)


class _FromConv1D(nn.Linear):
    """A GPT-2 ``Conv1D`` as the ``nn.Linear`` it computes, while kdnb prunes (`as_linears`)."""


def as_linears(model: nn.Module) -> nn.Module:
    """Replace, in place, each transformers ``Conv1D`` (``y = x W + b``, W of shape (in, out)) by the same
    ``nn.Linear`` (its weight W transposed): the criteria, the masks and Torch-Pruning's pruners see a Linear."""
    conv1d = _conv1d_class()
    if conv1d is None:
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is conv1d:
                linear = _FromConv1D(child.nx, child.nf, device=child.weight.device, dtype=child.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    linear.bias.copy_(child.bias)
                linear.weight.requires_grad_(child.weight.requires_grad)
                linear.bias.requires_grad_(child.bias.requires_grad)
                setattr(parent, name, linear)
    return model


def restore_modules(model: nn.Module) -> nn.Module:
    """Undo `as_linears`, in place: each Linear that was a ``Conv1D`` is one again at its current size, its
    weight transposed back (and its mask, when one is attached)."""
    conv1d = _conv1d_class()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, _FromConv1D):
                continue
            mask = getattr(child, "weight_mask", None)
            weight = child.weight_orig if mask is not None else child.weight
            layer = conv1d(child.out_features, child.in_features).to(device=weight.device, dtype=weight.dtype)
            layer.weight = nn.Parameter(weight.detach().t().contiguous(), requires_grad=weight.requires_grad)
            layer.bias = nn.Parameter(child.bias.detach().clone(), requires_grad=child.bias.requires_grad)
            if mask is not None:
                torch_prune.custom_from_mask(layer, "weight", mask.t().contiguous())
            setattr(parent, name, layer)
    return model


# Hidden-size parameters only training reads (Wav2Vec2's SpecAugment mask embedding), so the traced graph never
# couples them, and the norm whose weight, in the hidden-size group, shows which hidden channels survive.
_UNTRACED_HIDDEN = {"wav2vec2": ("masked_spec_embed", "encoder.layer_norm")}


class HiddenMarker:
    """Narrow the hidden-size parameters the graph cannot see (`_UNTRACED_HIDDEN`) like the hidden size: before the
    deletion, a norm of the hidden-size group holds its channel numbers (its weights kept aside); after it, the
    numbers left are the kept channels, which slice the untraced parameters, and the norm gets its weights back."""

    def __init__(self, model: nn.Module):
        self.params: list[tuple[nn.Module, str]] = []
        self.norm: nn.Module | None = None
        entry = _UNTRACED_HIDDEN.get(getattr(getattr(model, "config", None), "model_type", None))
        if entry is None or family_of(model) is None:
            return
        attr, norm = entry
        self.params = [(m, attr) for m in model.modules() if isinstance(getattr(m, attr, None), nn.Parameter)]
        self.norm = next((m for n, m in model.named_modules() if n == norm or n.endswith("." + norm)), None)
        if self.norm is None or not self.params:
            self.params = []
            return
        self.saved = self.norm.weight.detach().clone()
        with torch.no_grad():
            self.norm.weight.copy_(torch.arange(len(self.saved), dtype=self.saved.dtype))

    def narrow(self) -> None:
        if not self.params:
            return
        kept = self.norm.weight.detach().round().long()
        self.norm.weight = nn.Parameter(self.saved[kept], requires_grad=self.norm.weight.requires_grad)
        for module, attr in self.params:
            old = getattr(module, attr)
            setattr(module, attr, nn.Parameter(old.detach()[kept], requires_grad=old.requires_grad))


def head_count(module: nn.Module) -> int | None:
    """Heads of a transformers attention module that keeps only ``head_dim`` (LLaMA, Mistral, Qwen2 in
    transformers 5): the width of its query projection over the head width. None for any other module, and for
    the attention of a family whose heads stay whole."""
    head_dim = vars(module).get("head_dim")
    query = getattr(module, "q_proj", None)
    config = getattr(module, "config", None)
    family = FAMILIES.get(getattr(config, "model_type", None))
    if family is None or family.whole_heads or not isinstance(head_dim, int) or not isinstance(query, nn.Linear):
        return None
    return query.out_features // head_dim if query.out_features % head_dim == 0 else None


def whole_heads(module: nn.Module) -> bool:
    """Whether ``module`` is the attention of a family whose heads must stay whole (T5)."""
    family = FAMILIES.get(getattr(getattr(module, "config", None), "model_type", None))
    return family is not None and family.whole_heads and hasattr(module, "relative_attention_bias")


def _features(layer: object) -> tuple[int, int] | None:
    """(inputs, outputs) of a Linear, or of a GPT-2 Conv1D (which keeps them as ``nx``, ``nf``); None otherwise."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, nn.Module) and type(layer).__name__ == "Conv1D":
        return layer.nx, layer.nf
    return None


def _width(layer: nn.Module) -> int:
    if isinstance(layer, nn.Embedding):
        return layer.embedding_dim
    if isinstance(layer, nn.modules.conv._ConvNd):
        return layer.out_channels
    return layer.out_features


def layer_sizes(model: nn.Module, family: Family, head_dim: int) -> list[dict[str, int]]:
    """Per attention/MLP layer, in order: heads (and key/value heads), MLP width, read from the projections."""
    heads, kv_heads, widths = [], [], []
    for name, module in model.named_modules():
        query = _features(getattr(module, family.query, None))
        if query is not None and _is_attention(module):
            fused = family.query == "c_attn"
            heads.append(query[1] // ((3 if fused else 1) * head_dim))
            key = _features(getattr(module, family.key, None)) if family.key else None
            if key is not None:
                kv_heads.append(key[1] // head_dim)
        for up in family.up:
            if name.endswith("." + up) and _features(module) is not None:
                widths.append(_features(module)[1])
                break
    layers = [{"num_attention_heads": h} for h in heads]
    for entry, kv in zip(layers, kv_heads):
        entry["num_key_value_heads"] = kv
    if len(widths) == len(layers) or not layers:
        layers = layers or [{} for _ in widths]
        for entry, width in zip(layers, widths):
            entry["intermediate_size"] = width
    return layers


def _is_attention(module: nn.Module) -> bool:
    name = type(module).__name__
    return "Attention" in name or "Attn" in name


def sync_config(model: nn.Module) -> str | None:
    """Write the pruned model's sizes into its config, in place: ``hidden_size``, ``num_attention_heads``,
    ``num_key_value_heads``, the MLP width (``intermediate_size`` / ``n_inner`` / ``hidden_dim`` / ``d_ff``),
    ``head_dim`` (kept), Wav2Vec2's ``conv_dim``. Where layers now differ, the config keeps the first layer's
    values and lists every layer's under ``kdnb_layers``. Returns why ``from_pretrained`` could not rebuild the
    model from the config (`reload_problem`), else None. A model of no known family is left alone."""
    family = family_of(model)
    if family is None:
        return None
    config = model.config
    head_dim = head_width(config, family)
    if not hasattr(config, BUILT_FROM_KEY):  # the unpruned sizes: a skeleton the library can always build
        keys = (*_SIZE_KEYS, family.intermediate_key, *((family.head_dim_key,) if family.head_dim_key else ()),
                "conv_dim")
        setattr(config, BUILT_FROM_KEY, {k: getattr(config, k) for k in keys if hasattr(config, k)})
    hidden = next((_width(m) for n, m in model.named_modules() if any(n == h or n.endswith("." + h)
                                                                      for h in _HIDDEN_LAYERS)), None)
    if hidden is not None:
        config.hidden_size = hidden
    if family.head_dim_key:
        setattr(config, family.head_dim_key, head_dim)
    layers = layer_sizes(model, family, head_dim)
    for key in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
        values = [layer[key] for layer in layers if key in layer]
        if values:
            setattr(config, family.intermediate_key if key == "intermediate_size" else key, values[0])
    uniform = all(layer == layers[0] for layer in layers)
    if uniform and hasattr(config, _LAYERS_KEY):
        delattr(config, _LAYERS_KEY)
    elif not uniform:
        setattr(config, _LAYERS_KEY, layers)
    _keep_valid(config, layers)
    _sync_conv_dims(model, config)
    _sync_modules(model, config, family, head_dim)
    return reload_problem(model)


def _keep_valid(config, layers: list[dict[str, int]]) -> None:
    """A config class that validates its sizes (transformers 5's LLaMA: hidden size a multiple of the heads, checked
    again by ``save_pretrained``) refusing the pruned ones keeps the sizes it was built with, so it still saves; the
    true sizes are then under ``kdnb_sizes`` and ``kdnb_layers``, which `pretrained.from_pretrained` reads."""
    validate = getattr(config, "validate", None)
    if not callable(validate):
        return
    try:
        validate()
    except Exception:  # noqa: BLE001 - whatever the library refuses, the sizes it was built with it accepts
        setattr(config, SIZES_KEY, {key: getattr(config, key) for key in _SIZE_KEYS if hasattr(config, key)})
        setattr(config, _LAYERS_KEY, layers)
        for key, value in getattr(config, BUILT_FROM_KEY).items():
            if key in _SIZE_KEYS:
                setattr(config, key, value)
        return
    if hasattr(config, SIZES_KEY):
        delattr(config, SIZES_KEY)


def true_sizes(config) -> dict[str, int]:
    """The pruned model's hidden size and (first layer's) heads: the config's, unless `_keep_valid` kept the
    library's sizes and moved the true ones under ``kdnb_sizes``."""
    return getattr(config, SIZES_KEY, None) or {key: getattr(config, key) for key in _SIZE_KEYS
                                                 if getattr(config, key, None) is not None}


def head_width(config, family: Family) -> int:
    """The head width, from the config as it was before the cut (whole heads go: it does not change)."""
    explicit = getattr(config, family.head_dim_key, None) if family.head_dim_key else None
    if isinstance(explicit, int):
        return explicit
    if getattr(config, "model_type", None) == "t5":
        return config.d_kv
    before = getattr(config, BUILT_FROM_KEY, None) or {}  # a pruned config's hidden size no longer divides evenly
    return before.get("hidden_size", config.hidden_size) // before.get("num_attention_heads", config.num_attention_heads)


def _sync_conv_dims(model: nn.Module, config) -> None:
    extractor = getattr(getattr(model, "wav2vec2", model), "feature_extractor", None)
    if extractor is not None and hasattr(config, "conv_dim"):
        config.conv_dim = [layer.conv.out_channels for layer in extractor.conv_layers]


def _sync_modules(model: nn.Module, config, family: Family, head_dim: int) -> None:
    """The attributes modules read their sizes from in ``forward`` (beyond the head counts `update_heads` sets):
    GPT-2's ``split_size`` / ``embed_dim``, T5's ``inner_dim`` / ``d_model``, the ``embed_dim`` of the rest."""
    for module in model.modules():
        if not _is_attention(module):
            continue
        query = _features(getattr(module, family.query, None))
        if query is None:
            continue
        inputs, outputs = query
        if family.query == "c_attn":
            module.split_size = outputs // 3
            module.embed_dim = inputs
            module.num_heads = module.split_size // head_dim
        elif isinstance(vars(module).get("embed_dim"), int):
            module.embed_dim = inputs
        if isinstance(vars(module).get("inner_dim"), int):
            module.inner_dim = outputs
        if isinstance(vars(module).get("d_model"), int):
            module.d_model = inputs


def reload_problem(model: nn.Module) -> str | None:
    """Why ``type(model).from_pretrained`` could not rebuild ``model`` from its config (the first parameter whose
    shape the config gives differently), or None when it can (`pretrained.from_pretrained` reloads it either way)
    or when ``model`` is no library's."""
    if family_of(model) is None:
        return None
    return reload_problem_of(type(model), model.config, model.state_dict())


def reload_problem_of(model_class: type, config, state: dict[str, torch.Tensor] | None = None) -> str | None:
    """`reload_problem` of ``model_class(config)`` against ``state`` (None: only whether it builds). Built on the
    meta device: no memory, no init."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rebuilt = model_class(config)
    except Exception as error:  # noqa: BLE001 - any refusal of the library is the answer
        return f"{model_class.__name__}(config) fails: {(str(error).splitlines() or [type(error).__name__])[0]}"
    if state is None:
        return None if not hasattr(config, _LAYERS_KEY) else "layers differ (config.kdnb_layers)"
    shapes = {name: tuple(t.shape) for name, t in rebuilt.state_dict().items()}
    for name, tensor in state.items():
        if name in shapes and shapes[name] != tuple(tensor.shape):
            why = " (layers differ: see config.kdnb_layers)" if hasattr(config, _LAYERS_KEY) else ""
            return f"the config builds {name} as {shapes[name]}, the pruned model has {tuple(tensor.shape)}{why}"
    return None
