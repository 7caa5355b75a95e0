"""kdnb: make neural networks smaller by knowledge distillation and pruning, and watch it happen.

``import kdnb`` stays light: widgets and matplotlib load on first use. Inside IPython (a notebook kernel)
it also declares the magics ``%%distill``, ``%%prune`` and ``%kdnb``, loaded on their first use, so a cell
magic works after ``import kdnb`` as after ``%load_ext kdnb``.
"""
from __future__ import annotations

import importlib
import sys
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
    "register_method": "kdnb.engine.distill.methods",
    "Method": "kdnb.engine.distill.methods",
    "register_criterion": "kdnb.engine.prune.score.registry",
    "Criterion": "kdnb.engine.prune.score.criteria",
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


MAGICS = {"distill": "cell", "prune": "cell", "kdnb": "line"}


def _declare_magics() -> None:
    """In an IPython shell, declare the magics lazily: IPython runs ``%load_ext kdnb`` when one is first used
    (or asked for with ``%%distill?``); nothing heavy is imported now."""
    if "IPython" not in sys.modules:  # never import IPython just to ask
        return
    shell = sys.modules["IPython"].get_ipython()
    if shell is None:
        return
    from kdnb.env import in_kernel, plotting_enabled

    if in_kernel() and plotting_enabled():
        shell.events.register("post_run_cell", _warm_up_chart)
    manager = shell.magics_manager
    for name, kind in MAGICS.items():
        if name not in manager.magics[kind]:
            try:
                manager.register_lazy(name, "kdnb", kind)
            except (AttributeError, TypeError):  # an IPython without lazy magics of a kind: %load_ext kdnb it is
                return


def _warm_up_chart(*_: Any) -> None:
    """Once, when the cell that imported kdnb ends: load matplotlib and its fonts for the live chart, so the
    first training cell shows its chart within a second instead of paying a second or two of imports."""
    sys.modules["IPython"].get_ipython().events.unregister("post_run_cell", _warm_up_chart)
    from kdnb.widgets.live import warm_up

    warm_up()


_declare_magics()
