"""A kdnb file checked as a hostile one, before anything it describes is allocated: the zip records' CRCs
before unpickling, then the payload's whole structure (types, the module tree, each config against its
class, every tensor's shape and dtype, a compact entry's mask and values against its shape, the ties).
A damaged file is one `KdnbError` that names it; `kdnb.engine.serialize` reads only what passed.
"""
from __future__ import annotations

import math
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdnb.engine import plain_weights
from kdnb.errors import KdnbError

FORMAT = "kdnb"
FORMAT_VERSION = 1
def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def place(path: str) -> str:
    return repr(path) if path else "the top"



_KEYS = {"format", "version", "metadata", "spec", "tensors"}
_NODE_KEYS = {"class", "config", "training", "children"}
_COMPACT_KEYS = {"shape", "mask", "values"}
_MAX_DEPTH = 100  # module nesting; deeper is a hostile file, not a network


def damaged(file: str, what: str) -> KdnbError:
    return KdnbError(f"{file!r} is damaged: {what}; save the model again with kdnb.save(model, path) "
                     "(or use a backup copy)")


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def read(path: Path, known: Mapping[str, tuple[str, ...]]) -> dict:
    """The payload of the kdnb file at ``path``, its whole structure checked (``known``: each class `load` may
    rebuild, by its saved name, with the constructor arguments its config holds)."""
    file = str(path)
    if plain_weights.is_plain(path):  # a state_dict kdnb.export wrote, with its layer widths beside it
        payload = plain_weights.read(path)
        _check_payload(payload, file, known)
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
    _check_payload(payload, file, known)
    return payload


def _check_zip(path: Path, file: str) -> None:
    """Truncation and changed bytes, found by the zip records' CRC-32 (torch.load would not notice a
    flipped byte inside a tensor, or fail with ``OSError: Invalid argument`` on a truncated file)."""
    try:
        with zipfile.ZipFile(path) as archive:
            compressed = any(info.compress_type != zipfile.ZIP_STORED for info in archive.infolist())
            bad = None if compressed else archive.testzip()  # never inflate: a zip bomb stays unopened
    except Exception as error:  # noqa: BLE001 - zipfile raises many types on a broken archive
        raise damaged(file, f"it is truncated or its zip archive is broken ({first_line(error)})") from None
    if compressed:
        raise damaged(file, "its zip archive holds compressed records, which torch.save never writes")
    if bad is not None:
        raise damaged(file, f"record {bad!r} fails its CRC check (bytes changed after saving)")


def _check_payload(payload: Any, file: str, known: Mapping[str, tuple[str, ...]]) -> None:
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
        raise damaged(file, f"its format version is {version!r}, where kdnb writes an integer from 1 to "
                             f"{FORMAT_VERSION}")
    missing, unknown = _KEYS - payload.keys(), payload.keys() - _KEYS - {"tied"}
    if missing or unknown:
        parts = ([f"lacks {sorted(missing)}"] if missing else []) + \
                ([f"has unknown keys {sorted(unknown)}"] if unknown else [])
        raise damaged(file, "its top-level dict " + "; ".join(parts))
    if not isinstance(payload["metadata"], dict) or not all(isinstance(k, str) for k in payload["metadata"]):
        raise damaged(file, f"its metadata is a {type(payload['metadata']).__name__}, not a dict with str keys")
    _check_tensors(payload["tensors"], file)
    if "tied" not in payload:  # a file from before ties were written down: one stored tensor was one weight
        payload["tied"] = _stored_once(payload["tensors"])
    _check_tied(payload["tied"], payload["tensors"], file)
    _check_node(payload["spec"], "", set(), file, 0, known)


def _check_tensors(entries: Any, file: str) -> None:
    if not isinstance(entries, dict):
        raise damaged(file, f"its 'tensors' is a {type(entries).__name__}, not a dict of tensors")
    for key, entry in entries.items():
        if not isinstance(key, str) or not key or "" in key.split("."):
            raise damaged(file, f"it holds a tensor named {key!r}, not a dotted name like '0.weight'")
        if isinstance(entry, torch.Tensor):
            if entry.layout != torch.strided:
                raise damaged(file, f"tensor {key!r} is a {entry.layout} tensor; kdnb writes dense ones")
            if entry.untyped_storage().nbytes() < entry.numel() * entry.element_size():  # `_encode` never does
                raise damaged(file, f"tensor {key!r} of shape {list(entry.shape)} is a view of "
                                     f"{entry.untyped_storage().nbytes():,} bytes (its elements overlap)")
        elif isinstance(entry, dict):
            _check_compact(key, entry, file)
        else:
            raise damaged(file, f"entry {key!r} is a {type(entry).__name__}, not a tensor")


def _check_compact(key: str, entry: dict, file: str) -> None:
    """A compact entry is ``shape`` + a bit per element + the non-zeros: the three must agree, so decoding
    allocates exactly what the file holds (a hand-edited shape cannot ask for 931 GiB)."""
    if entry.keys() != _COMPACT_KEYS:
        raise damaged(file, f"compact entry {key!r} has keys {sorted(map(str, entry))}, not {sorted(_COMPACT_KEYS)}")
    shape, mask, values = entry["shape"], entry["mask"], entry["values"]
    if not (isinstance(shape, list) and len(shape) <= 64 and all(type(n) is int and n >= 0 for n in shape)):
        raise damaged(file, f"compact entry {key!r} has shape {shape!r}, not a list of sizes >= 0")
    _check_vector(key, "mask", mask, lambda dtype: dtype == torch.uint8, "uint8 bits", file)
    _check_vector(key, "values", values, lambda dtype: dtype.is_floating_point, "floating-point values", file)
    count = math.prod(shape)
    if mask.numel() != (count + 7) // 8:
        raise damaged(file, f"compact entry {key!r} has shape {shape} ({count:,} elements) but a mask of "
                             f"{mask.numel():,} bytes, which covers {mask.numel() * 8:,}")
    kept = int(np.count_nonzero(np.unpackbits(mask.numpy(), count=count)))
    if kept != values.numel():
        raise damaged(file, f"compact entry {key!r} marks {kept:,} non-zeros in its mask but holds "
                             f"{values.numel():,} values")


def _check_vector(key: str, part: str, tensor: Any, dtype_ok: Callable[[torch.dtype], bool], need: str,
                  file: str) -> None:
    if isinstance(tensor, torch.Tensor) and tensor.layout == torch.strided and tensor.dim() == 1 \
            and dtype_ok(tensor.dtype):
        return
    what = (f"{str(tensor.dtype).removeprefix('torch.')} of shape {list(tensor.shape)}"
            if isinstance(tensor, torch.Tensor) else type(tensor).__name__)
    raise damaged(file, f"compact entry {key!r}: its {part} is {what}, not a 1-D tensor of {need}")


def shape_dtype(entry: torch.Tensor | dict) -> tuple[tuple[int, ...], torch.dtype]:
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
        raise damaged(file, f"its 'tied' is a {type(tied).__name__}, not a dict of names")
    for key, first in tied.items():
        if not (isinstance(key, str) and isinstance(first, str) and key in entries and first in entries
                and first not in tied and key != first):
            raise damaged(file, f"'tied' maps {key!r} to {first!r}, but both must name saved tensors (the second "
                                 "an untied one)")
        if shape_dtype(entries[key]) != shape_dtype(entries[first]):
            raise damaged(file, f"tied tensors {key!r} and {first!r} differ in shape or dtype")


def _check_node(node: Any, path: str, paths: set[str], file: str, depth: int,
                known: Mapping[str, tuple[str, ...]]) -> None:
    """One node of the module tree, then its children: types, names, and each config against its class."""
    where = place(path)
    if depth > _MAX_DEPTH:
        raise damaged(file, f"its module tree nests deeper than {_MAX_DEPTH} levels")
    if not isinstance(node, dict):
        raise damaged(file, f"the module at {where} is a {type(node).__name__}, not a dict")
    if "alias" in node:  # a module used twice: a path written before this one
        alias = node["alias"]
        if node.keys() != {"alias"} or not isinstance(alias, str) or alias not in paths or \
                alias == "" or path.startswith(alias + "."):  # an ancestor would make the tree a loop
            target = place(alias) if isinstance(alias, str) else repr(alias)
            raise damaged(file, f"the module at {where} refers to {target}, which is not a module saved before "
                                 "it (nor may it be one of its parents)")
        return
    if node.keys() != _NODE_KEYS:
        raise damaged(file, f"the module at {where} has keys {sorted(map(str, node))}, not {sorted(_NODE_KEYS)}")
    cls, config, children = node["class"], node["config"], node["children"]
    if not isinstance(cls, str) or not cls:
        raise damaged(file, f"the module at {where} has class {cls!r}, not a class name")
    if type(node["training"]) is not bool:
        raise damaged(file, f"the module at {where} has training={node['training']!r}, not True/False")
    if config is not None or cls in known:
        _check_config(cls, config, where, file, known)
    if not isinstance(children, dict):
        raise damaged(file, f"the module at {where} has children {type(children).__name__}, not a dict")
    paths.add(path)
    for name, child in children.items():
        if not isinstance(name, str) or not name or "." in name:
            raise damaged(file, f"the module at {where} has a child named {name!r}, not a module name")
        if child is not None:
            _check_node(child, join(path, name), paths, file, depth + 1, known)


def _check_config(cls: str, config: Any, where: str, file: str, known: Mapping[str, tuple[str, ...]]) -> None:
    if not isinstance(config, dict):
        raise damaged(file, f"the {cls} at {where} has config {config!r}, not a dict of its arguments")
    allowed = known.get(cls, ())
    # A missing argument would silently take its default (a Conv's padding: other outputs). Only `bias` may be
    # missing (a file from a torch whose norm layers lacked it): whether a layer has one, its tensors tell.
    missing = [key for key in allowed if key not in config and key != "bias"]
    if missing:
        raise damaged(file, f"the {cls} at {where} lacks config key {missing[0]!r}")
    for key, value in config.items():
        if cls in known and key not in allowed:
            raise damaged(file, f"the {cls} at {where} has config key {key!r}, which it does not take "
                                 f"({', '.join(allowed) or 'no arguments'})")
        check = CONFIG_TYPES.get(key, _is_plain)
        if not check(value):
            raise damaged(file, f"the {cls} at {where} has {key}={value!r}, which is not {check.__doc__}")


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


# The type of each constructor argument `serialize.rebuildable` reads off a module (a test keeps this complete).
CONFIG_TYPES = {
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
