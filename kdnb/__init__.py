"""kdnb: make neural networks smaller by knowledge distillation and pruning, and watch it happen.

``import kdnb`` stays light: widgets and matplotlib load on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

from kdnb.env import version as _version

__version__ = _version("kdnb")  # one source: pyproject.toml, as installed

_VERBS = {
    "train": "kdnb.api",
    "distill": "kdnb.api",
    "prune": "kdnb.api",
    "measure": "kdnb.api",
    "evaluate": "kdnb.api",
    "compare": "kdnb.api",
    "save": "kdnb.api",
    "load": "kdnb.api",
    "sensitivity": "kdnb.api",
    "make_permanent": "kdnb.api",
    "export": "kdnb.api",
    "KdnbError": "kdnb.errors",
    "Callback": "kdnb.engine.events",
}
_MODULES = ("datasets", "models", "widgets", "plots", "engine", "exercises", "api", "env", "errors")
__all__ = [*_VERBS, *_MODULES, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _VERBS:
        return getattr(importlib.import_module(_VERBS[name]), name)
    if name in _MODULES:
        return importlib.import_module(f"kdnb.{name}")
    raise AttributeError(f"module 'kdnb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext kdnb``: register the %%distill, %%prune and %kdnb magics."""
    from kdnb.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from kdnb.magics import unload_ipython_extension as unload

    unload(ipython)
