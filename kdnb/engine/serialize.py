"""Save a model to one file and load it back without running pickled code.

A kdnb file is ``torch.save`` of a dict that holds only tensors, str/int/float/bool/None, lists
and dicts, so `load` reads it with ``torch.load(weights_only=True)``:

    {"format": "kdnb", "version": 1, "metadata": {...},
     "spec": module tree, "tensors": {"0.weight": tensor or compact entry, ...},
     "tied": {"3.weight": "1.weight", ...}}

- The **module tree** is ``{"class": "torch.nn.Linear", "config": {...}, "training": bool,
  "children": {name: tree}}`` (or ``{"alias": "path"}`` for a module used twice). The config is
  read off the module's attributes, so a layer whose shape structured pruning changed is rebuilt
  at its new shape. Only `rebuildable` classes are rebuilt from the tree; any other model loads
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

import functools
import inspect
import io
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from kdnb.engine.checks import check_model
from kdnb import models
from kdnb.engine.distributed import is_main_process
from kdnb.engine.file_checks import (FORMAT, FORMAT_VERSION, damaged, first_line, join, read, shape_dtype,
                                     place)
from kdnb.errors import KdnbError
from kdnb.engine.prune.graph.groups import attention_layers, update_heads

SPARSE_MIN_NUMEL = 256  # smaller tensors stay dense: two more records in the zip file cost more than they save

_CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias",
         "padding_mode")
_BN = ("num_features", "eps", "momentum", "affine", "track_running_stats", "bias")
_MAXPOOL = ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode")
_AVGPOOL = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")

# The torch.nn classes load rebuilds without user code, with the constructor arguments read off each module
# (for "bias", whether the module has one); kdnb's own classes register themselves (`kdnb.models.rebuildable`).
_TORCH: dict[type[nn.Module], tuple[str, ...]] = {
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
    nn.Sequential: (), nn.ModuleList: (),
    nn.GroupNorm: ("num_groups", "num_channels", "eps", "affine"), nn.ReLU6: ("inplace",),
    nn.Hardswish: ("inplace",), nn.Hardsigmoid: ("inplace",), nn.AdaptiveAvgPool3d: ("output_size",),
    nn.Embedding: ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq",
                   "sparse"),
    nn.MultiheadAttention: ("embed_dim", "num_heads", "dropout", "kdim", "vdim", "batch_first"),
}
# Layers load(model=...) may resize when structured pruning changed a saved tensor's shape.
# Attributes that follow the tensors' shapes (a property such as SelfAttention.head_dim follows by itself).
_TORCH_RESIZABLE: dict[type[nn.Module], tuple[str, ...]] = {
    nn.Linear: ("in_features", "out_features"),
    nn.modules.conv._ConvNd: ("in_channels", "out_channels", "groups"),
    nn.modules.batchnorm._NormBase: ("num_features",),
    nn.LayerNorm: ("normalized_shape",), nn.GroupNorm: ("num_channels",), nn.Embedding: ("embedding_dim",),
    nn.MultiheadAttention: ("embed_dim", "kdim", "vdim"),
}


@dataclass(frozen=True)
class _Classes:
    """What save and load know of classes: torch's (`_TORCH`) and those registered with
    `kdnb.models.rebuildable`, read when a call needs them (a class registered after import counts)."""

    arguments: dict[type[nn.Module], tuple[str, ...]]  # only those this torch's constructors take
    by_name: dict[str, type[nn.Module]]
    empty: dict[type[nn.Module], Callable[[], nn.Module]]  # containers whose constructor needs children
    resizable: dict[type[nn.Module], tuple[str, ...]]

    @property
    def known(self) -> dict[str, tuple[str, ...]]:
        """Each class's saved name -> its arguments (what `file_checks` checks configs against)."""
        return {name: self.arguments[cls] for name, cls in self.by_name.items()}


def _classes() -> _Classes:
    return _table(tuple(models.REBUILDABLE.items()))


@functools.cache
def _table(registered: tuple[tuple[type[nn.Module], models.RebuildRecipe], ...]) -> _Classes:
    given = {**_TORCH, **{cls: rebuild.arguments for cls, rebuild in registered}}
    arguments = {cls: tuple(arg for arg in args if arg in inspect.signature(cls).parameters)
                 for cls, args in given.items()}
    return _Classes(arguments, {class_name(cls): cls for cls in arguments},
                    {cls: rebuild.empty for cls, rebuild in registered if rebuild.empty is not None},
                    {**_TORCH_RESIZABLE, **{cls: r.follows_shapes for cls, r in registered if r.follows_shapes}})


def rebuildable() -> dict[type[nn.Module], tuple[str, ...]]:
    """Every class `load` rebuilds without user code, with the constructor arguments read off a saved module."""
    return dict(_classes().arguments)


def class_name(cls: type) -> str:
    """'torch.nn.Linear', 'kdnb.models.Residual', else 'module.QualName'."""
    if cls.__module__.startswith("torch.nn.modules."):
        return f"torch.nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


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
        model: any ``nn.Module``. Models built from `rebuildable` classes (every ``kdnb.models``
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
        model: ``None`` rebuilds the saved architecture (it must consist of `rebuildable` classes).
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
    payload = read(target, _classes().known)
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
    return read(_check_path(path, writing=False), _classes().known)["metadata"]


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
    cls, arguments = plain_class(module), _classes().arguments
    config = None
    if cls in arguments:
        config = {attr: _plain(getattr(module, attr) is not None if attr == "bias" else getattr(module, attr))
                  for attr in arguments[cls]}
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
    if node["class"] not in _classes().by_name:
        short = node["class"].rsplit(".", 1)[-1]
        raise KdnbError(f"{file!r} holds a {node['class']} (at {place(path)}), which kdnb cannot rebuild "
                        f"without its code; load the weights into a fresh one: kdnb.load({file!r}, model={short}(...))")
    module = built[path] = _meta_module(node, path, file)
    for name, child in node["children"].items():
        module.add_module(name, None if child is None else
                          _build(child, built, f"{path}.{name}" if path else name, file))
    return module


def _meta_module(node: dict, path: str, file: str) -> nn.Module:
    """One `rebuildable` node, without its children, built from its config on the meta device."""
    classes = _classes()
    cls = classes.by_name[node["class"]]
    config = {key: tuple(v) if isinstance(v, list) else v for key, v in node["config"].items()}
    try:
        with torch.device("meta"), warnings.catch_warnings():  # init's warnings (a zero size) are not the user's
            warnings.simplefilter("ignore")
            return classes.empty[cls]() if cls in classes.empty else cls(**config)
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:  # e.g. Dropout(p=2), a negative size
        raise damaged(file, f"the {node['class']} at {place(path)} cannot be built from its config "
                             f"{node['config']} ({first_line(error)})") from None


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
        raise damaged(file, f"its weights do not match its architecture ({_key_lists(missing, unexpected)})")
    for key, tensor in expected.items():
        shape, dtype = shape_dtype(entries[key])
        if shape != tuple(tensor.shape):
            raise damaged(file, f"tensor {key!r} has shape {list(shape)} but its layer's config makes it "
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
               if tensor is not None and join(path, name) in entries}
        declared = {name: shape_dtype(entries[join(path, name)]) for name in own}
        for name, tensor in own.items():
            _check_kind(join(path, name), declared[name][1], tensor, file)
        changed = {name: shape for name, (shape, _) in declared.items() if shape != tuple(own[name].shape)}
        attrs = next((attrs for cls, attrs in _classes().resizable.items() if isinstance(module, cls)), ())
        node = _node(spec, path)
        # a module of the saved class may resize (its own tensors: a class token, a layer scale) or change the
        # attributes that follow its children's shapes (an attention's num_heads) with no tensor of its own changed
        same_class = node is not None and node.get("class") == class_name(plain_class(module))
        if changed and not same_class:
            name, shape = next(iter(changed.items()))
            raise KdnbError(f"saved tensor {join(path, name)!r} in {file!r} has shape {shape} but model= has "
                            f"{tuple(own[name].shape)}; pass a fresh instance of the class that was saved")
        if not same_class or not (changed or attrs):
            continue
        meta = _meta_module(node, path, file)  # what the saved config makes of each tensor: must be the file's
        for name, (shape, _) in declared.items():
            if shape != tuple(getattr(meta, name).shape):
                raise damaged(file, f"tensor {join(path, name)!r} has shape {list(shape)} but its layer's config "
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
        raise KdnbError(f"cannot load {file!r} into model=: {first_line(error)}; pass a fresh model=YourNet() "
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
        raise damaged(file, f"tensor {key!r} holds {str(dtype).removeprefix('torch.')} but its layer needs "
                             f"{_kind(tensor.dtype)} values")


def _kind(dtype: torch.dtype) -> str:
    if dtype.is_floating_point:
        return "floating-point"
    return "complex" if dtype.is_complex else "bool" if dtype == torch.bool else "integer"


def _check_ties_fit(expected: dict[str, torch.Tensor], tied: dict[str, str], file: str) -> None:
    for key, first in tied.items():
        if isinstance(expected[key], nn.Parameter) != isinstance(expected[first], nn.Parameter):
            raise damaged(file, f"'tied' joins {key!r} and {first!r}, but only one of them is a parameter")


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


def _key_lists(missing: list[str], unexpected: list[str]) -> str:
    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "")
    return "; ".join(([f"missing {some(missing)}"] if missing else []) +
                     ([f"unexpected {some(unexpected)}"] if unexpected else []))


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
