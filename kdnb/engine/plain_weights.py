"""Read a plain ``state_dict`` file (``.pt`` or ``.safetensors``) that `kdnb.export` wrote, with the JSON beside
it that holds the layer widths, so `kdnb.load(path, model=YourNet())` resizes a structurally pruned model's
layers and loads it into the user's own class (the same code that loads a kdnb file).

The JSON (``<file>.json``, e.g. ``student.pt.json``) is ``{"format": "kdnb-widths", "version": 1,
"spec": module tree, "tied": {name: first name}}``: the module tree of a kdnb file (each layer's class and
constructor arguments, its widths among them) and which names hold one shared tensor. A ``.safetensors``
file stores a shared tensor once (it refuses aliases); ``tied`` names the others.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from kdnb.errors import KdnbError, first_line

SUFFIXES = (".pt", ".pth", ".safetensors")
WIDTHS_FORMAT = "kdnb-widths"
WIDTHS_VERSION = 1


def widths_path(path: Path) -> Path:
    """The JSON beside a state_dict file: ``student.pt`` -> ``student.pt.json``."""
    return path.with_name(path.name + ".json")


def is_plain(path: Path) -> bool:
    """A state_dict file with its widths beside it (a kdnb file may also be named ``*.pt``: it has none)."""
    return path.suffix in SUFFIXES and widths_path(path).is_file()


def read(path: Path) -> dict[str, Any]:
    """The file and its widths as the payload of a kdnb file (unchecked: `kdnb.engine.serialize` checks it)."""
    file, sidecar = str(path), widths_path(path)
    try:
        widths = json.loads(sidecar.read_text())
    except (OSError, ValueError) as error:
        raise KdnbError(f"cannot read the widths {str(sidecar)!r} beside {file!r} ({first_line(error)}); export "
                        "the model again with kdnb.export(model, path, example=x)") from None
    if not (isinstance(widths, dict) and widths.get("format") == WIDTHS_FORMAT and {"spec", "tied"} <= widths.keys()):
        raise KdnbError(f"{str(sidecar)!r} is not the widths file kdnb.export writes; export the model again with "
                        "kdnb.export(model, path, example=x)")
    if widths.get("version", 0) > WIDTHS_VERSION:
        raise KdnbError(f"{str(sidecar)!r} was written by a newer kdnb; upgrade kdnb: pip install -U kdnb")
    tensors = _state_dict(path)
    tied = widths["tied"] if isinstance(widths["tied"], dict) else {}
    # `tied` names are stored once (safetensors) or twice (torch.save keeps the alias): the payload holds them once
    tensors = {key: tensor for key, tensor in tensors.items() if key not in tied}
    return {"format": "kdnb", "version": 1, "metadata": {}, "spec": widths["spec"],
            "tensors": tensors | {key: tensors.get(first) for key, first in tied.items()}, "tied": widths["tied"]}


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise KdnbError("reading .safetensors needs the safetensors package; install kdnb's export extra: "
                        "pip install 'kdnb[export]'") from None
    except Exception as error:  # noqa: BLE001 - whatever the reader trips on, the file is damaged
        raise KdnbError(f"{str(path)!r} is not a readable state_dict ({first_line(error)}); export the model again "
                        "with kdnb.export(model, path, example=x)") from None
