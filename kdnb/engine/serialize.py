"""Save a model to one file and load it back without running pickled code.

A kdnb file is ``torch.save`` of a dict that holds only tensors, str/int/float/bool/None, lists
and dicts, so `load` reads it with ``torch.load(weights_only=True)``:

    {"format": "kdnb", "version": 1, "metadata": {...},
     "spec": module tree, "tensors": {"0.weight": tensor or compact entry, ...}}

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
"""
from __future__ import annotations

import inspect
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from kdnb.engine.checks import check_model
from kdnb.engine.distributed import is_main_process
from kdnb.engine.errors import KdnbError
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
}
# Only the arguments this torch's constructors take (BatchNorm's bias, say, is recent).
REBUILDABLE = {cls: tuple(arg for arg in args if arg in inspect.signature(cls).parameters)
               for cls, args in _ARGS.items()}
# Containers whose constructor needs arguments: build them empty, then add the saved children.
_EMPTY = {Residual: lambda: Residual(nn.Identity())}
# Layers load(model=...) may resize when structured pruning changed a saved tensor's shape.
_RESIZABLE: dict[type[nn.Module], tuple[str, ...]] = {
    nn.Linear: ("in_features", "out_features"),
    nn.modules.conv._ConvNd: ("in_channels", "out_channels", "groups"),
    nn.modules.batchnorm._NormBase: ("num_features",),
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
    check_model(model)
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
        path: a kdnb file.
        model: ``None`` rebuilds the saved architecture (it must consist of `REBUILDABLE` classes).
            Otherwise the weights load *into* this module (a fresh instance of the saved model's
            class) and it is returned; its Linear/Conv/BatchNorm layers are resized first where
            structured pruning changed the saved shapes.

    Uses ``torch.load(weights_only=True)``: no code in the file is ever run. The returned model is
    on the CPU (or on ``model``'s device), in the train/eval mode it was saved in.
    """
    if model is not None:
        check_model(model, "model=")
    payload = _read(_check_path(path, writing=False))
    tensors = {key: _decode(entry) for key, entry in payload["tensors"].items()}
    spec = payload["spec"]
    try:
        if model is None:
            model = _build(spec, {}, "", str(path))
            model.load_state_dict(tensors, strict=True, assign=True)  # assign: keep each tensor's saved dtype
        else:
            _fit_skeleton(model, spec, tensors)
            model.load_state_dict(tensors, strict=True)
    except (RuntimeError, TypeError) as error:  # a damaged file, or one written by another torch
        last_line = str(error).strip().splitlines()[-1].strip() if str(error).strip() else type(error).__name__
        raise KdnbError(f"cannot load {str(path)!r}: {last_line}; pass a fresh model=YourNet() built as "
                        "when saved") from None
    _set_modes(model, spec)
    return model


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``metadata`` dict given to `save` (``{}`` when none was given)."""
    return _read(_check_path(path, writing=False))["metadata"]


# ---- writing ----

@torch.no_grad()
def _payload(model: nn.Module, *, compact: bool, metadata: dict) -> dict:
    # A tensor shared by two modules (tied weights) is encoded once, so torch.save stores it once; the
    # tensor stays referenced in `encoded`, so its memory (the key) is not reused while we walk.
    encoded: dict[tuple, tuple[torch.Tensor, Any]] = {}
    tensors = {}
    for path, module in plain_modules(model, remove_duplicate=False):
        for name, tensor, _ in module_tensors(module):
            key = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
            if key not in encoded:
                encoded[key] = (tensor, _encode(tensor, compact))
            tensors[f"{path}.{name}" if path else name] = encoded[key][1]
    return {"format": FORMAT, "version": FORMAT_VERSION, "metadata": metadata,
            "spec": _describe(model, "", {}), "tensors": tensors}


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

def _decode(entry: torch.Tensor | dict) -> torch.Tensor:
    if isinstance(entry, torch.Tensor):
        return entry
    shape, values = entry["shape"], entry["values"]
    count = int(np.prod(shape, dtype=np.int64))
    keep = torch.from_numpy(np.unpackbits(entry["mask"].numpy(), count=count).astype(bool))
    flat = values.new_zeros(count)
    flat[keep] = values
    return flat.reshape(shape)


def _read(path: Path) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise KdnbError(f"cannot read {str(path)!r}: {error.strerror or error}") from None
    except Exception:  # noqa: BLE001 - whatever torch.load trips on, the file is not one of ours
        raise KdnbError(f"{str(path)!r} is not a kdnb file (torch.load with weights_only=True cannot read it); "
                        "write one with kdnb.save(model, path)") from None
    if not (isinstance(payload, dict) and payload.get("format") == FORMAT):
        hint = ("it looks like a state_dict: use model.load_state_dict(torch.load(path))"
                if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values())
                else "write one with kdnb.save(model, path)")
        raise KdnbError(f"{str(path)!r} is not a kdnb file; {hint}")
    version = payload.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise KdnbError(f"{str(path)!r} was written by a newer kdnb (file format {version}, this kdnb reads up to "
                        f"{FORMAT_VERSION}); upgrade kdnb: pip install -U kdnb")
    return payload


def _build(node: dict, built: dict[str, nn.Module], path: str, file: str) -> nn.Module:
    if "alias" in node:
        return built[node["alias"]]
    cls = _BY_NAME.get(node["class"])
    if cls is None:
        short = node["class"].rsplit(".", 1)[-1]
        raise KdnbError(f"{file!r} holds a {node['class']} (at {path or 'the top'}), which kdnb cannot rebuild "
                        f"without its code; load the weights into a fresh one: kdnb.load({file!r}, model={short}(...))")
    config = {key: tuple(v) if isinstance(v, list) else v for key, v in node["config"].items()}
    module = _EMPTY[cls]() if cls in _EMPTY else cls(**config)
    built[path] = module
    for name, child in node["children"].items():
        module.add_module(name, None if child is None else
                          _build(child, built, f"{path}.{name}" if path else name, file))
    return module


def _node(spec: dict, path: str) -> dict | None:
    node: dict | None = spec
    for name in path.split(".") if path else ():
        node = (node or {}).get("children", {}).get(name)
        if node is not None and "alias" in node:
            node = _node(spec, node["alias"])
    return node


def _fit_skeleton(model: nn.Module, spec: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Check that ``tensors`` fit ``model``, resizing Linear/Conv/BatchNorm layers where structured pruning
    changed a shape. Every check comes before the first change, so a mismatch leaves ``model`` untouched."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in tensors]
    unexpected = [key for key in tensors if key not in expected]
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"] if missing else []) + \
                ([f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}"]
                 if unexpected else [])
        raise KdnbError(f"the saved weights do not fit model= ({'; '.join(parts)}); pass a fresh instance of "
                        "the class that was saved")
    resizes = []
    for path, module in model.named_modules():
        changed = {name: tensors[f"{path}.{name}" if path else name].shape
                   for name, tensor in [*module._parameters.items(), *module._buffers.items()]
                   if tensor is not None and (f"{path}.{name}" if path else name) in tensors
                   and tensors[f"{path}.{name}" if path else name].shape != tensor.shape}
        if not changed:
            continue
        attrs = next((attrs for cls, attrs in _RESIZABLE.items() if isinstance(module, cls)), None)
        node = _node(spec, path)
        if attrs is None or node is None or not node.get("config"):
            name, shape = next(iter(changed.items()))
            key = f"{path}.{name}" if path else name
            raise KdnbError(f"saved tensor {key!r} has shape {tuple(shape)} but model= has "
                            f"{tuple(getattr(module, name).shape)}; only Linear/Conv/BatchNorm layers are resized")
        resizes.append((module, {attr: node["config"][attr] for attr in attrs}, changed))
    for module, attrs, changed in resizes:
        for attr, value in attrs.items():
            setattr(module, attr, value)
        for name, shape in changed.items():
            old = getattr(module, name)
            new = torch.empty(shape, dtype=old.dtype, device=old.device)
            if name in module._parameters:
                module._parameters[name] = nn.Parameter(new, requires_grad=old.requires_grad)
            else:
                module._buffers[name] = new


def _set_modes(model: nn.Module, spec: dict) -> None:
    for path, module in model.named_modules():
        node = _node(spec, path)
        if node is not None and "training" in node:
            module.training = node["training"]


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
        raise KdnbError(f"no such file: {str(path)!r}")
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
