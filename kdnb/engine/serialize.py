"""Save a model to one file and load it back without running pickled code.

A kdnb file is ``torch.save`` of a dict that holds only tensors, str/int/float/bool/None, lists
and dicts, so `load` reads it with ``torch.load(weights_only=True)``:

    {"format": "kdnb", "version": 1, "metadata": {...},
     "spec": module tree, "tensors": {"0.weight": tensor or compact entry, ...},
     "tied": {"3.weight": "1.weight", ...}}

- The **module tree** is ``{"class": "torch.nn.Linear", "config": {...}, "training": bool,
  "children": {name: tree}}`` (or ``{"alias": "path"}`` for a module used twice). The config is
  read off the module's attributes, so a layer whose shape structured pruning changed is rebuilt
  at its new shape. Only `REBUILDABLE` classes are rebuilt from the tree; any other model loads
  into a skeleton the user passes (``model=MyNet()``).
- **Sparse tensors** are stored as ``{"shape": [...], "mask": packed bits, 1 where non-zero (uint8),
  "values": the non-zeros}``: 1 bit per element plus the non-zeros, so a 90%-sparse float32 layer
  takes ~7.6x less space. A floating-point tensor is stored so whenever that is smaller than dense
  (for float32: more than 1/32 of it zero); a trained dense weight has no zeros and stays dense.
- Pruning masks (``torch.nn.utils.prune``: ``weight_orig * weight_mask``) and parametrizations are
  folded into the plain weight they compute, so the loaded model is a plain model.
- **Tied weights** (one Parameter used by two modules, computed the same way) are stored once; ``tied``
  maps each further name to the first, and `load` hands back one Parameter again, so the copies cannot
  train apart. (In a file written before ``tied`` existed, names stored as one tensor are tied.)

`load` checks the zip records' CRCs before it unpickles, then the file's whole structure (types, the
module tree, each config against its class, every tensor's shape and dtype against the layer that will
hold it, a compact entry's mask and values against its shape) before it allocates anything the file
describes: a damaged file is one `KdnbError` that names it.
"""
from __future__ import annotations

import inspect
import io
import math
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from kdnb.engine.checks import check_model
from kdnb import models
from kdnb.engine.distributed import is_main_process
from kdnb.engine import plain_weights
from kdnb.errors import KdnbError
from kdnb.engine.prune.graph.groups import attention_layers, update_heads
from kdnb.models import Residual

FORMAT = "kdnb"
FORMAT_VERSION = 1
SPARSE_MIN_NUMEL = 256  # smaller tensors stay dense: two more records in the zip file cost more than they save

_CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias",
         "padding_mode")
_BN = ("num_features", "eps", "momentum", "affine", "track_running_stats", "bias")
_MAXPOOL = ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode")
_AVGPOOL = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")

# The classes load rebuilds without user code, with the constructor arguments read off each module
# (for "bias", whether the module has one).
_ARGS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.Linear: ("in_features", "out_features", "bias"),
    nn.modules.linear.NonDynamicallyQuantizableLinear: ("in_features", "out_features", "bias"),  # MHA's out_proj
    nn.Conv1d: _CONV, nn.Conv2d: _CONV,
    nn.BatchNorm1d: _BN, nn.BatchNorm2d: _BN,
    nn.LayerNorm: ("normalized_shape", "eps", "elementwise_affine", "bias"),
    nn.ReLU: ("inplace",), nn.LeakyReLU: ("negative_slope", "inplace"), nn.GELU: ("approximate",),
    nn.SiLU: ("inplace",), nn.Tanh: (), nn.Sigmoid: (),
    nn.Flatten: ("start_dim", "end_dim"), nn.Dropout: ("p", "inplace"), nn.Identity: (),
    nn.MaxPool1d: _MAXPOOL, nn.MaxPool2d: _MAXPOOL,
    nn.AvgPool1d: _AVGPOOL, nn.AvgPool2d: (*_AVGPOOL, "divisor_override"),
    nn.AdaptiveAvgPool1d: ("output_size",), nn.AdaptiveAvgPool2d: ("output_size",),
    nn.Sequential: (), nn.ModuleList: (), Residual: (),
    nn.GroupNorm: ("num_groups", "num_channels", "eps", "affine"), nn.ReLU6: ("inplace",),
    nn.Hardswish: ("inplace",), nn.Hardsigmoid: ("inplace",), nn.AdaptiveAvgPool3d: ("output_size",),
    nn.Embedding: ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq",
                   "sparse"),
    nn.MultiheadAttention: ("embed_dim", "num_heads", "dropout", "kdim", "vdim", "batch_first"),
    models.LayerNorm2d: ("normalized_shape", "eps", "elementwise_affine", "bias"), models.LayerScale: ("shape",),
    models.ConvNeXtBlock: (), models.SelfAttention: ("dim", "num_heads", "head_dim", "causal"),
    models.TorchAttention: (), models.TransformerBlock: (), models.Tokens: (), models.ClassToken: ("dim",),
    models.PositionEmbedding: ("length", "dim"), models.VisionTransformer: (), models.GPT: (),
}
# Only the arguments this torch's constructors take (BatchNorm's bias, say, is recent).
REBUILDABLE = {cls: tuple(arg for arg in args if arg in inspect.signature(cls).parameters)
               for cls, args in _ARGS.items()}
# Containers whose constructor needs arguments: build them empty, then add the saved children.
_EMPTY = {Residual: lambda: Residual(nn.Identity())}
# Layers load(model=...) may resize when structured pruning changed a saved tensor's shape.
# Attributes that follow the tensors' shapes (a property such as SelfAttention.head_dim follows by itself).
_RESIZABLE: dict[type[nn.Module], tuple[str, ...]] = {
    nn.Linear: ("in_features", "out_features"),
    nn.modules.conv._ConvNd: ("in_channels", "out_channels", "groups"),
    nn.modules.batchnorm._NormBase: ("num_features",),
    nn.LayerNorm: ("normalized_shape",), nn.GroupNorm: ("num_channels",), nn.Embedding: ("embedding_dim",),
    nn.MultiheadAttention: ("embed_dim", "kdim", "vdim"), models.SelfAttention: ("num_heads",),
}


def class_name(cls: type) -> str:
    """'torch.nn.Linear', 'kdnb.models.Residual', else 'module.QualName'."""
    if cls.__module__.startswith("torch.nn.modules."):
        return f"torch.nn.{cls.__name__}"
    if cls is Residual:
        return "kdnb.models.Residual"
    return f"{cls.__module__}.{cls.__qualname__}"


_BY_NAME = {class_name(cls): cls for cls in REBUILDABLE}


def plain_class(module: nn.Module) -> type:
    """The module's own class (a parametrized module's class is a generated subclass of it)."""
    return type(module).__bases__[0] if parametrize.is_parametrized(module) else type(module)


def plain_modules(model: nn.Module, remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Module]]:
    """``named_modules`` of the plain model that `load` returns: parametrization containers left out."""
    seen: set[int] = set()

    def walk(module: nn.Module, path: str) -> Iterator[tuple[str, nn.Module]]:
        if remove_duplicate and id(module) in seen:
            return
        seen.add(id(module))
        yield path, module
        for name, child in module._modules.items():
            if child is not None and not (name == "parametrizations" and parametrize.is_parametrized(module)):
                yield from walk(child, f"{path}.{name}" if path else name)

    yield from walk(model, "")


def module_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """``(name, tensor, is_parameter)`` for one module's own persistent state as a plain module holds it:
    a pruning mask folded in (``weight = weight_orig * weight_mask``), a parametrization evaluated."""
    folded = {hook._tensor_name: hook.apply_mask(module) for hook in module._forward_pre_hooks.values()
              if isinstance(hook, prune.BasePruningMethod)}
    hidden = {f"{name}_orig" for name in folded} | {f"{name}_mask" for name in folded}
    for name, param in module._parameters.items():
        if param is not None and name not in hidden:
            yield name, param.detach(), True
    for name, tensor in folded.items():
        yield name, tensor.detach(), True
    if parametrize.is_parametrized(module):
        for name in module.parametrizations:
            yield name, getattr(module, name).detach(), True
    for name, buffer in module._buffers.items():
        if buffer is not None and name not in hidden and name not in module._non_persistent_buffers_set:
            yield name, buffer.detach(), False


def save(model: nn.Module, path: str | os.PathLike, *, metadata: dict | None = None) -> Path:
    """Write ``model`` (architecture and weights) to ``path``; return the path.

    Args:
        model: any ``nn.Module``. Models built from `REBUILDABLE` classes (every ``kdnb.models``
            network, also after structured pruning) load back without code; others load into a
            skeleton: ``kdnb.load(path, model=MyNet())``.
        path: file to write (conventionally ``*.kdnb``); its directory must exist.
        metadata: optional dict of str/int/float/bool/None, lists and dicts, kept in the file
            (read it back with `read_metadata`).

    Sparse weights are stored compactly (see the module docstring); pruning masks and
    parametrizations are folded. The model is not changed.
    """
    _check_not_meta(check_model(model), "model")
    target = _check_path(path, writing=True)
    if not is_main_process():
        return target  # under torchrun every rank holds the same model: rank 0 writes it, once
    payload = _payload(model, compact=True, metadata=_check_metadata(metadata))
    partial = target.with_name(target.name + ".partial")  # a crash mid-write leaves an old file intact
    try:
        with open(partial, "wb") as file:  # a file object, so the zip's inner names do not depend on the path
            torch.save(payload, file)
        os.replace(partial, target)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise KdnbError(f"cannot write {str(target)!r}: {error.strerror or error}") from None
    return target


def file_size(model: nn.Module, *, compact: bool = True) -> int:
    """Bytes of the file `save` writes for ``model``; ``compact=False``: every tensor stored dense."""
    buffer = io.BytesIO()
    torch.save(_payload(model, compact=compact, metadata={}), buffer)
    return buffer.getbuffer().nbytes


def load(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Read a file written by `save` and return the model, with the outputs it had when saved.

    Args:
        path: a kdnb file, or a ``.pt`` / ``.safetensors`` state_dict that `kdnb.export` wrote (the layer
            widths it needs are in the JSON beside it).
        model: ``None`` rebuilds the saved architecture (it must consist of `REBUILDABLE` classes).
            Otherwise the weights load *into* this module (a fresh instance of the saved model's
            class) and it is returned; its Linear/Conv/BatchNorm layers are resized first where
            structured pruning changed the saved shapes.

    Uses ``torch.load(weights_only=True)``: no code in the file is ever run. The whole file is checked
    before anything is allocated or ``model`` is touched; a damaged one raises `KdnbError`. Tied weights
    come back as one Parameter. The returned model is on the CPU (or on ``model``'s device), in the
    train/eval mode it was saved in.
    """
    if model is not None:
        _check_not_meta(check_model(model, "model="), "model=")
    target = _check_path(path, writing=False)
    payload = _read(target)
    file, spec, tied = str(path), payload["spec"], payload["tied"]
    rebuild = model is None
    if rebuild:
        model = _build(spec, {}, "", file)  # on the meta device: a hand-edited size allocates nothing
        _check_fit(model.state_dict(keep_vars=True), payload, file)
        resizes = []
    else:
        resizes = _fit_skeleton(model, payload, file)
    tensors = _decode_all(payload["tensors"], tied)
    if rebuild:
        model.load_state_dict(tensors, strict=True, assign=True)  # assign: the saved tensors, dtype and all
    else:
        _load_into(model, tensors, resizes, file)
    _tie(model, tied)
    _set_modes(model, spec)
    return model


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``metadata`` dict given to `save` (``{}`` when none was given)."""
    return _read(_check_path(path, writing=False))["metadata"]


# ---- writing ----

def dense_payload(model: nn.Module) -> dict:
    """What `save` would write with every tensor dense: ``tensors`` is the plain model's state_dict (masks
    folded), ``spec`` its module tree (each layer's widths), ``tied`` the names that share a tensor."""
    return _payload(model, compact=False, metadata={})


@torch.no_grad()
def _payload(model: nn.Module, *, compact: bool, metadata: dict) -> dict:
    # A tensor shared by two modules is encoded once, so torch.save stores it once; the tensor stays
    # referenced in `encoded`, so its memory (the key) is not reused while we walk.
    encoded: dict[tuple, tuple[torch.Tensor, Any]] = {}
    by_source: dict[int, list[tuple[str, torch.Tensor]]] = {}  # tied weights: the same Parameter underneath
    tensors, tied = {}, {}
    for path, module in plain_modules(model, remove_duplicate=False):
        for name, tensor, _ in module_tensors(module):
            key = f"{path}.{name}" if path else name
            twins = by_source.setdefault(id(_source(module, name)), [])
            first = next((other for other, value in twins if _same_bits(value, tensor)), None)
            if first is not None:  # the same weight, computed the same way: one tensor after loading too
                tied[key], tensors[key] = first, tensors[first]
                continue
            twins.append((key, tensor))
            memory = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
            if memory not in encoded:
                encoded[memory] = (tensor, _encode(tensor, compact))
            tensors[key] = encoded[memory][1]
    return {"format": FORMAT, "version": FORMAT_VERSION, "metadata": metadata,
            "spec": _describe(model, "", {}), "tensors": tensors, "tied": tied}


def _source(module: nn.Module, name: str) -> torch.Tensor | None:
    """The tensor that ``module``'s plain ``name`` is computed from: the parameter or buffer itself, or what
    a pruning mask (``weight_orig``) or a parametrization (``original``) is applied to."""
    if parametrize.is_parametrized(module, name):
        return getattr(module.parametrizations[name], "original", module.parametrizations[name])
    if any(isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == name
           for hook in module._forward_pre_hooks.values()):
        return module._parameters[f"{name}_orig"]
    return module._parameters[name] if name in module._parameters else module._buffers[name]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (NaN included, which ``torch.equal`` calls unequal)."""
    return (a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
            and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))


def _describe(module: nn.Module, path: str, seen: dict[int, str]) -> dict:
    if id(module) in seen:
        return {"alias": seen[id(module)]}
    seen[id(module)] = path
    cls = plain_class(module)
    config = None
    if cls in REBUILDABLE:
        config = {attr: _plain(getattr(module, attr) is not None if attr == "bias" else getattr(module, attr))
                  for attr in REBUILDABLE[cls]}
    children = {name: None if child is None else _describe(child, f"{path}.{name}" if path else name, seen)
                for name, child in module._modules.items()
                if not (name == "parametrizations" and parametrize.is_parametrized(module))}
    return {"class": class_name(cls), "config": config, "training": module.training, "children": children}


def _plain(value: Any) -> Any:
    """Tuples become lists: the file holds only lists, dicts and scalars."""
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def _encode(tensor: torch.Tensor, compact: bool) -> torch.Tensor | dict:
    tensor = tensor.cpu()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()  # a view: torch.save would write its whole underlying storage
    if compact and tensor.is_floating_point() and tensor.numel() >= SPARSE_MIN_NUMEL:
        keep = (tensor != 0).flatten()
        compact_bytes = (tensor.numel() + 7) // 8 + int(keep.sum()) * tensor.element_size()
        if compact_bytes < tensor.numel() * tensor.element_size():
            return {"shape": list(tensor.shape), "mask": torch.from_numpy(np.packbits(keep.numpy())),
                    "values": tensor.flatten()[keep]}
    return tensor


# ---- reading ----

def _build(node: dict, built: dict[str, nn.Module], path: str, file: str) -> nn.Module:
    """The saved architecture on the meta device (shapes, no memory); `load` then assigns the saved tensors."""
    if "alias" in node:
        return built[node["alias"]]
    if node["class"] not in _BY_NAME:
        short = node["class"].rsplit(".", 1)[-1]
        raise KdnbError(f"{file!r} holds a {node['class']} (at {_where(path)}), which kdnb cannot rebuild "
                        f"without its code; load the weights into a fresh one: kdnb.load({file!r}, model={short}(...))")
    module = built[path] = _meta_module(node, path, file)
    for name, child in node["children"].items():
        module.add_module(name, None if child is None else
                          _build(child, built, f"{path}.{name}" if path else name, file))
    return module


def _meta_module(node: dict, path: str, file: str) -> nn.Module:
    """One `REBUILDABLE` node, without its children, built from its config on the meta device."""
    cls = _BY_NAME[node["class"]]
    config = {key: tuple(v) if isinstance(v, list) else v for key, v in node["config"].items()}
    try:
        with torch.device("meta"), warnings.catch_warnings():  # init's warnings (a zero size) are not the user's
            warnings.simplefilter("ignore")
            return _EMPTY[cls]() if cls in _EMPTY else cls(**config)
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:  # e.g. Dropout(p=2), a negative size
        raise _damaged(file, f"the {node['class']} at {_where(path)} cannot be built from its config "
                             f"{node['config']} ({_first_line(error)})") from None


def _node(spec: dict, path: str) -> dict | None:
    node: dict | None = spec
    for name in path.split(".") if path else ():
        node = (node or {}).get("children", {}).get(name)
        if node is not None and "alias" in node:
            node = _node(spec, node["alias"])
    return node


def _check_fit(expected: dict[str, torch.Tensor], payload: dict, file: str) -> None:
    """The rebuilt (meta) model's tensors against the file's: the same names, shapes and kinds of dtype."""
    entries = payload["tensors"]
    missing = [key for key in expected if key not in entries]
    unexpected = [key for key in entries if key not in expected]
    if missing or unexpected:
        raise _damaged(file, f"its weights do not match its architecture ({_key_lists(missing, unexpected)})")
    for key, tensor in expected.items():
        shape, dtype = _shape_dtype(entries[key])
        if shape != tuple(tensor.shape):
            raise _damaged(file, f"tensor {key!r} has shape {list(shape)} but its layer's config makes it "
                                 f"{list(tensor.shape)}")
        _check_kind(key, dtype, tensor, file)
    _check_ties_fit(expected, payload["tied"], file)


def _fit_skeleton(model: nn.Module, payload: dict, file: str) -> list[tuple[nn.Module, dict, dict]]:
    """Check that the file's tensors fit ``model`` and return the resizes of Linear/Conv/BatchNorm layers where
    structured pruning changed a shape. Every check comes before the first change: a mismatch leaves ``model``
    untouched."""
    entries, spec = payload["tensors"], payload["spec"]
    expected = model.state_dict(keep_vars=True)
    missing = [key for key in expected if key not in entries]
    unexpected = [key for key in entries if key not in expected]
    if missing or unexpected:
        raise KdnbError(f"the weights in {file!r} do not fit model= ({_key_lists(missing, unexpected)}); pass a "
                        "fresh instance of the class that was saved")
    resizes = []
    for path, module in model.named_modules():
        own = {name: tensor for name, tensor in [*module._parameters.items(), *module._buffers.items()]
               if tensor is not None and _join(path, name) in entries}
        declared = {name: _shape_dtype(entries[_join(path, name)]) for name in own}
        for name, tensor in own.items():
            _check_kind(_join(path, name), declared[name][1], tensor, file)
        changed = {name: shape for name, (shape, _) in declared.items() if shape != tuple(own[name].shape)}
        attrs = next((attrs for cls, attrs in _RESIZABLE.items() if isinstance(module, cls)), ())
        node = _node(spec, path)
        # a module of the saved class may resize (its own tensors: a class token, a layer scale) or change the
        # attributes that follow its children's shapes (an attention's num_heads) with no tensor of its own changed
        same_class = node is not None and node.get("class") == class_name(plain_class(module))
        if changed and not same_class:
            name, shape = next(iter(changed.items()))
            raise KdnbError(f"saved tensor {_join(path, name)!r} in {file!r} has shape {shape} but model= has "
                            f"{tuple(own[name].shape)}; pass a fresh instance of the class that was saved")
        if not same_class or not (changed or attrs):
            continue
        meta = _meta_module(node, path, file)  # what the saved config makes of each tensor: must be the file's
        for name, (shape, _) in declared.items():
            if shape != tuple(getattr(meta, name).shape):
                raise _damaged(file, f"tensor {_join(path, name)!r} has shape {list(shape)} but its layer's config "
                                     f"makes it {list(getattr(meta, name).shape)}")
        updates = {attr: getattr(meta, attr) for attr in attrs if getattr(module, attr) != getattr(meta, attr)}
        if changed or updates:
            resizes.append((module, updates, changed))
    _check_ties_fit(expected, payload["tied"], file)
    return resizes


def _load_into(model: nn.Module, tensors: dict[str, torch.Tensor], resizes: list[tuple[nn.Module, dict, dict]],
               file: str) -> None:
    """Resize and fill the user's skeleton. The file fits (checked); should the skeleton's own loading code
    (a ``_load_from_state_dict`` or load hook of its class) raise, it gets back the layers and values it had."""
    layers = [(module, {attr: getattr(module, attr) for attr in attrs}, dict(module._parameters),
               dict(module._buffers)) for module, attrs, _ in resizes]
    values = {key: tensor.detach().clone() for key, tensor in model.state_dict().items()}
    heads, _ = attention_layers(model)  # head widths of the fresh skeleton, before its projections shrink
    try:
        _resize(resizes)
        model.load_state_dict(tensors, strict=True)
        update_heads(heads)  # a hand-written attention of the user's class: its num_heads follows its Linears
    except Exception as error:
        for module, attrs, parameters, buffers in layers:
            for attr, value in attrs.items():
                setattr(module, attr, value)
            module._parameters.update(parameters)
            module._buffers.update(buffers)
        with torch.no_grad():
            for key, tensor in model.state_dict(keep_vars=True).items():
                tensor.copy_(values[key])
        if not isinstance(error, (RuntimeError, TypeError)):
            raise  # the skeleton's own code failed: its own traceback says where
        raise KdnbError(f"cannot load {file!r} into model=: {_first_line(error)}; pass a fresh model=YourNet() "
                        "built as when saved") from None


def _resize(resizes: list[tuple[nn.Module, dict, dict]]) -> None:
    for module, attrs, changed in resizes:
        for attr, value in attrs.items():
            setattr(module, attr, value)
        if isinstance(module, nn.MultiheadAttention):
            module.head_dim = module.embed_dim // module.num_heads
        for name, shape in changed.items():
            old = getattr(module, name)
            new = torch.empty(shape, dtype=old.dtype, device=old.device)
            if name in module._parameters:
                module._parameters[name] = nn.Parameter(new, requires_grad=old.requires_grad)
            else:
                module._buffers[name] = new


def _check_kind(key: str, dtype: torch.dtype, tensor: torch.Tensor, file: str) -> None:
    """A float weight may come back as float16 or float64, never as integers (nor an int counter as float)."""
    if _kind(dtype) != _kind(tensor.dtype):
        raise _damaged(file, f"tensor {key!r} holds {str(dtype).removeprefix('torch.')} but its layer needs "
                             f"{_kind(tensor.dtype)} values")


def _kind(dtype: torch.dtype) -> str:
    if dtype.is_floating_point:
        return "floating-point"
    return "complex" if dtype.is_complex else "bool" if dtype == torch.bool else "integer"


def _check_ties_fit(expected: dict[str, torch.Tensor], tied: dict[str, str], file: str) -> None:
    for key, first in tied.items():
        if isinstance(expected[key], nn.Parameter) != isinstance(expected[first], nn.Parameter):
            raise _damaged(file, f"'tied' joins {key!r} and {first!r}, but only one of them is a parameter")


def _decode_all(entries: dict, tied: dict[str, str]) -> dict[str, torch.Tensor]:
    tensors = {key: _decode(entry) for key, entry in entries.items() if key not in tied}
    return tensors | {key: tensors[first] for key, first in tied.items()}


def _decode(entry: torch.Tensor | dict) -> torch.Tensor:
    if isinstance(entry, torch.Tensor):
        return entry
    shape, values = entry["shape"], entry["values"]
    count = math.prod(shape)
    keep = torch.from_numpy(np.unpackbits(entry["mask"].numpy(), count=count).astype(bool))
    flat = values.new_zeros(count)
    flat[keep] = values
    return flat.reshape(shape)


def _tie(model: nn.Module, tied: dict[str, str]) -> None:
    """Make each tied name hold the very Parameter (or buffer) of the name it is tied to."""
    for key, first in tied.items():
        owner, name = _owner(model, key)
        source_owner, source_name = _owner(model, first)
        if name in owner._parameters:
            owner._parameters[name] = source_owner._parameters[source_name]
        else:
            owner._buffers[name] = source_owner._buffers[source_name]


def _owner(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    path, _, name = key.rpartition(".")
    return model.get_submodule(path), name


def _set_modes(model: nn.Module, spec: dict) -> None:
    for path, module in model.named_modules():
        node = _node(spec, path)
        if node is not None and "training" in node:
            module.training = node["training"]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _where(path: str) -> str:
    return repr(path) if path else "the top"


def _key_lists(missing: list[str], unexpected: list[str]) -> str:
    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "")
    return "; ".join(([f"missing {some(missing)}"] if missing else []) +
                     ([f"unexpected {some(unexpected)}"] if unexpected else []))


# ---- the file's structure, checked before anything it describes is allocated ----

_KEYS = {"format", "version", "metadata", "spec", "tensors"}
_NODE_KEYS = {"class", "config", "training", "children"}
_COMPACT_KEYS = {"shape", "mask", "values"}
_MAX_DEPTH = 100  # module nesting; deeper is a hostile file, not a network


def _damaged(file: str, what: str) -> KdnbError:
    return KdnbError(f"{file!r} is damaged: {what}; save the model again with kdnb.save(model, path) "
                     "(or use a backup copy)")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _read(path: Path) -> dict:
    file = str(path)
    if plain_weights.is_plain(path):  # a state_dict kdnb.export wrote, with its layer widths beside it
        payload = plain_weights.read(path)
        _check_payload(payload, file)
        return payload
    try:
        with open(path, "rb") as stream:
            head = stream.read(4)
    except OSError as error:
        raise KdnbError(f"cannot read {file!r}: {error.strerror or error}; check that it is a readable file") from None
    if not head:
        raise KdnbError(f"{file!r} is empty (0 bytes), not a kdnb file; save the model again with "
                        "kdnb.save(model, path)")
    is_zip = head.startswith(b"PK")  # torch.save's format; kdnb.save writes nothing else
    if is_zip:
        _check_zip(path, file)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - whatever torch.load trips on, the file is not one of ours
        if is_zip and isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in str(error):
            raise KdnbError(f"{file!r} is not a kdnb file: it holds pickled Python objects (a model saved whole "
                            "with torch.save?), which weights_only=True refuses to run; if you trust its source, "
                            "torch.load(path, weights_only=False) reads it") from None
        what = "a zip archive, but not one torch.save wrote" if is_zip else \
            "torch.load with weights_only=True cannot read it"
        raise KdnbError(f"{file!r} is not a kdnb file ({what}); write one with kdnb.save(model, path)") from None
    _check_payload(payload, file)
    return payload


def _check_zip(path: Path, file: str) -> None:
    """Truncation and changed bytes, found by the zip records' CRC-32 (torch.load would not notice a
    flipped byte inside a tensor, or fail with ``OSError: Invalid argument`` on a truncated file)."""
    try:
        with zipfile.ZipFile(path) as archive:
            compressed = any(info.compress_type != zipfile.ZIP_STORED for info in archive.infolist())
            bad = None if compressed else archive.testzip()  # never inflate: a zip bomb stays unopened
    except Exception as error:  # noqa: BLE001 - zipfile raises many types on a broken archive
        raise _damaged(file, f"it is truncated or its zip archive is broken ({_first_line(error)})") from None
    if compressed:
        raise _damaged(file, "its zip archive holds compressed records, which torch.save never writes")
    if bad is not None:
        raise _damaged(file, f"record {bad!r} fails its CRC check (bytes changed after saving)")


def _check_payload(payload: Any, file: str) -> None:
    if not (isinstance(payload, dict) and payload.get("format") == FORMAT):
        hint = ("it looks like a state_dict: use model.load_state_dict(torch.load(path))"
                if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values())
                else "write one with kdnb.save(model, path)")
        raise KdnbError(f"{file!r} is not a kdnb file; {hint}")
    version = payload.get("version")
    if type(version) is int and version > FORMAT_VERSION:
        raise KdnbError(f"{file!r} was written by a newer kdnb (file format {version}, this kdnb reads up to "
                        f"{FORMAT_VERSION}); upgrade kdnb: pip install -U kdnb")
    if type(version) is not int or version < 1:
        raise _damaged(file, f"its format version is {version!r}, where kdnb writes an integer from 1 to "
                             f"{FORMAT_VERSION}")
    missing, unknown = _KEYS - payload.keys(), payload.keys() - _KEYS - {"tied"}
    if missing or unknown:
        parts = ([f"lacks {sorted(missing)}"] if missing else []) + \
                ([f"has unknown keys {sorted(unknown)}"] if unknown else [])
        raise _damaged(file, "its top-level dict " + "; ".join(parts))
    if not isinstance(payload["metadata"], dict) or not all(isinstance(k, str) for k in payload["metadata"]):
        raise _damaged(file, f"its metadata is a {type(payload['metadata']).__name__}, not a dict with str keys")
    _check_tensors(payload["tensors"], file)
    if "tied" not in payload:  # a file from before ties were written down: one stored tensor was one weight
        payload["tied"] = _stored_once(payload["tensors"])
    _check_tied(payload["tied"], payload["tensors"], file)
    _check_node(payload["spec"], "", set(), file, depth=0)


def _check_tensors(entries: Any, file: str) -> None:
    if not isinstance(entries, dict):
        raise _damaged(file, f"its 'tensors' is a {type(entries).__name__}, not a dict of tensors")
    for key, entry in entries.items():
        if not isinstance(key, str) or not key or "" in key.split("."):
            raise _damaged(file, f"it holds a tensor named {key!r}, not a dotted name like '0.weight'")
        if isinstance(entry, torch.Tensor):
            if entry.layout != torch.strided:
                raise _damaged(file, f"tensor {key!r} is a {entry.layout} tensor; kdnb writes dense ones")
            if entry.untyped_storage().nbytes() < entry.numel() * entry.element_size():  # `_encode` never does
                raise _damaged(file, f"tensor {key!r} of shape {list(entry.shape)} is a view of "
                                     f"{entry.untyped_storage().nbytes():,} bytes (its elements overlap)")
        elif isinstance(entry, dict):
            _check_compact(key, entry, file)
        else:
            raise _damaged(file, f"entry {key!r} is a {type(entry).__name__}, not a tensor")


def _check_compact(key: str, entry: dict, file: str) -> None:
    """A compact entry is ``shape`` + a bit per element + the non-zeros: the three must agree, so decoding
    allocates exactly what the file holds (a hand-edited shape cannot ask for 931 GiB)."""
    if entry.keys() != _COMPACT_KEYS:
        raise _damaged(file, f"compact entry {key!r} has keys {sorted(map(str, entry))}, not {sorted(_COMPACT_KEYS)}")
    shape, mask, values = entry["shape"], entry["mask"], entry["values"]
    if not (isinstance(shape, list) and len(shape) <= 64 and all(type(n) is int and n >= 0 for n in shape)):
        raise _damaged(file, f"compact entry {key!r} has shape {shape!r}, not a list of sizes >= 0")
    _check_vector(key, "mask", mask, lambda dtype: dtype == torch.uint8, "uint8 bits", file)
    _check_vector(key, "values", values, lambda dtype: dtype.is_floating_point, "floating-point values", file)
    count = math.prod(shape)
    if mask.numel() != (count + 7) // 8:
        raise _damaged(file, f"compact entry {key!r} has shape {shape} ({count:,} elements) but a mask of "
                             f"{mask.numel():,} bytes, which covers {mask.numel() * 8:,}")
    kept = int(np.count_nonzero(np.unpackbits(mask.numpy(), count=count)))
    if kept != values.numel():
        raise _damaged(file, f"compact entry {key!r} marks {kept:,} non-zeros in its mask but holds "
                             f"{values.numel():,} values")


def _check_vector(key: str, part: str, tensor: Any, dtype_ok: Callable[[torch.dtype], bool], need: str,
                  file: str) -> None:
    if isinstance(tensor, torch.Tensor) and tensor.layout == torch.strided and tensor.dim() == 1 \
            and dtype_ok(tensor.dtype):
        return
    what = (f"{str(tensor.dtype).removeprefix('torch.')} of shape {list(tensor.shape)}"
            if isinstance(tensor, torch.Tensor) else type(tensor).__name__)
    raise _damaged(file, f"compact entry {key!r}: its {part} is {what}, not a 1-D tensor of {need}")


def _shape_dtype(entry: torch.Tensor | dict) -> tuple[tuple[int, ...], torch.dtype]:
    """What a checked entry decodes to, read without decoding it."""
    if isinstance(entry, torch.Tensor):
        return tuple(entry.shape), entry.dtype
    return tuple(entry["shape"]), entry["values"].dtype


def _stored_once(entries: dict) -> dict[str, str]:
    """``tied`` for the names whose entries unpickled as one object (`_payload` encoded them once)."""
    first: dict[int, str] = {}
    return {key: first[id(entry)] for key, entry in entries.items() if first.setdefault(id(entry), key) != key}


def _check_tied(tied: Any, entries: dict, file: str) -> None:
    if not isinstance(tied, dict):
        raise _damaged(file, f"its 'tied' is a {type(tied).__name__}, not a dict of names")
    for key, first in tied.items():
        if not (isinstance(key, str) and isinstance(first, str) and key in entries and first in entries
                and first not in tied and key != first):
            raise _damaged(file, f"'tied' maps {key!r} to {first!r}, but both must name saved tensors (the second "
                                 "an untied one)")
        if _shape_dtype(entries[key]) != _shape_dtype(entries[first]):
            raise _damaged(file, f"tied tensors {key!r} and {first!r} differ in shape or dtype")


def _check_node(node: Any, path: str, paths: set[str], file: str, depth: int) -> None:
    """One node of the module tree, then its children: types, names, and each config against its class."""
    where = _where(path)
    if depth > _MAX_DEPTH:
        raise _damaged(file, f"its module tree nests deeper than {_MAX_DEPTH} levels")
    if not isinstance(node, dict):
        raise _damaged(file, f"the module at {where} is a {type(node).__name__}, not a dict")
    if "alias" in node:  # a module used twice: a path written before this one
        alias = node["alias"]
        if node.keys() != {"alias"} or not isinstance(alias, str) or alias not in paths or \
                alias == "" or path.startswith(alias + "."):  # an ancestor would make the tree a loop
            target = _where(alias) if isinstance(alias, str) else repr(alias)
            raise _damaged(file, f"the module at {where} refers to {target}, which is not a module saved before "
                                 "it (nor may it be one of its parents)")
        return
    if node.keys() != _NODE_KEYS:
        raise _damaged(file, f"the module at {where} has keys {sorted(map(str, node))}, not {sorted(_NODE_KEYS)}")
    cls, config, children = node["class"], node["config"], node["children"]
    if not isinstance(cls, str) or not cls:
        raise _damaged(file, f"the module at {where} has class {cls!r}, not a class name")
    if type(node["training"]) is not bool:
        raise _damaged(file, f"the module at {where} has training={node['training']!r}, not True/False")
    if config is not None or cls in _BY_NAME:
        _check_config(cls, config, where, file)
    if not isinstance(children, dict):
        raise _damaged(file, f"the module at {where} has children {type(children).__name__}, not a dict")
    paths.add(path)
    for name, child in children.items():
        if not isinstance(name, str) or not name or "." in name:
            raise _damaged(file, f"the module at {where} has a child named {name!r}, not a module name")
        if child is not None:
            _check_node(child, _join(path, name), paths, file, depth + 1)


def _check_config(cls: str, config: Any, where: str, file: str) -> None:
    if not isinstance(config, dict):
        raise _damaged(file, f"the {cls} at {where} has config {config!r}, not a dict of its arguments")
    allowed = REBUILDABLE.get(_BY_NAME.get(cls), ())
    # A missing argument would silently take its default (a Conv's padding: other outputs). Only `bias` may be
    # missing (a file from a torch whose norm layers lacked it): whether a layer has one, its tensors tell.
    missing = [key for key in allowed if key not in config and key != "bias"]
    if missing:
        raise _damaged(file, f"the {cls} at {where} lacks config key {missing[0]!r}")
    for key, value in config.items():
        if cls in _BY_NAME and key not in allowed:
            raise _damaged(file, f"the {cls} at {where} has config key {key!r}, which it does not take "
                                 f"({', '.join(allowed) or 'no arguments'})")
        check = _CONFIG_TYPES.get(key, _is_plain)
        if not check(value):
            raise _damaged(file, f"the {cls} at {where} has {key}={value!r}, which is not {check.__doc__}")


def _is_int(v: Any) -> bool:
    """an integer"""
    return type(v) is int


def _is_bool(v: Any) -> bool:
    """True or False"""
    return type(v) is bool


def _is_number(v: Any) -> bool:
    """a number"""
    return type(v) in (int, float)


def _is_str(v: Any) -> bool:
    """a string"""
    return type(v) is str


def _is_size(v: Any) -> bool:
    """an integer or a list of integers"""
    return _is_int(v) or (type(v) is list and all(map(_is_int, v)))


def _is_plain(v: Any) -> bool:
    """a str, number, bool, None or a list of them"""
    return v is None or type(v) in (bool, int, float, str) or (type(v) is list and all(map(_is_plain, v)))


def _or_none(check):
    def or_none(v: Any) -> bool:
        return v is None or check(v)
    or_none.__doc__ = f"{check.__doc__} or None"
    return or_none


def _is_padding(v: Any) -> bool:
    """an integer, a list of integers or 'same'/'valid'"""
    return _is_size(v) or v in ("same", "valid")


def _is_output_size(v: Any) -> bool:
    """an integer or a list of integers/None"""
    return _is_int(v) or (type(v) is list and all(x is None or _is_int(x) for x in v))


# The type of each constructor argument `REBUILDABLE` reads off a module (a test keeps this complete).
_CONFIG_TYPES = {
    **dict.fromkeys(("in_features", "out_features", "in_channels", "out_channels", "groups", "num_features",
                     "start_dim", "end_dim", "num_groups", "num_channels", "num_embeddings", "embedding_dim",
                     "embed_dim", "num_heads", "head_dim", "dim", "length"), _is_int),
    **dict.fromkeys(("kdim", "vdim", "padding_idx"), _or_none(_is_int)),
    **dict.fromkeys(("batch_first", "causal", "scale_grad_by_freq", "sparse"), _is_bool),
    "max_norm": _or_none(_is_number), "norm_type": _is_number, "dropout": _is_number, "shape": _is_size,
    **dict.fromkeys(("bias", "affine", "track_running_stats", "elementwise_affine", "inplace", "return_indices",
                     "ceil_mode", "count_include_pad"), _is_bool),
    **dict.fromkeys(("eps", "negative_slope", "p"), _is_number),
    **dict.fromkeys(("kernel_size", "dilation", "normalized_shape"), _is_size),
    "momentum": _or_none(_is_number), "stride": _or_none(_is_size), "divisor_override": _or_none(_is_int),
    "padding": _is_padding, "output_size": _or_none(_is_output_size),
    "padding_mode": _is_str, "approximate": _is_str,
}


# ---- checks ----

def _check_path(path: Any, *, writing: bool) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise KdnbError(f"path should be a file name (str or pathlib.Path), got {type(path).__name__}")
    target = Path(path).expanduser()
    if target.is_dir():
        raise KdnbError(f"{str(path)!r} is a directory; give a file name such as {str(target / 'model.kdnb')!r}")
    if writing and not target.parent.is_dir():
        raise KdnbError(f"directory {str(target.parent)!r} does not exist; create it first "
                        f"(Path({str(target.parent)!r}).mkdir(parents=True))")
    if not writing and not target.exists():
        raise KdnbError(f"no such file: {str(path)!r}; check the name (relative paths start at {os.getcwd()!r})")
    return target


def _check_metadata(metadata: Any) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise KdnbError(f"metadata should be a dict, got {type(metadata).__name__}")

    def plain(value: Any, where: str) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    raise KdnbError(f"metadata{where} has a non-string key {key!r}; use str keys")
            return {key: plain(v, f"{where}[{key!r}]") for key, v in value.items()}
        raise KdnbError(f"metadata{where} is a {type(value).__name__}; the file keeps only str, int, float, "
                        "bool, None, lists and dicts")

    return plain(metadata, "")


def _check_not_meta(model: nn.Module, what: str) -> None:
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        raise KdnbError(f"{what} has weights on the meta device (shapes without data); build it on a real "
                        "device, or give it memory first with model.to_empty(device='cpu')")
