"""Static matplotlib figures of kdnb's results (no widgets). A result's ``.plot()`` comes here through
`kdnb.engine.results`: each drawer registers itself for its result type (``@drawer(PruneResult)``), and
importing this package registers them all. matplotlib itself loads only when a figure is drawn."""
from __future__ import annotations

import importlib
from typing import Any

from kdnb.plots import distill, history, prune  # noqa: F401 - importing them registers their drawers

_NAMES = {"plot_history": "kdnb.plots.history", "HistoryFigure": "kdnb.plots.history",
          "plot_prune": "kdnb.plots.prune", "plot_sensitivity": "kdnb.plots.prune",
          "plot_distill": "kdnb.plots.distill", "new_figure": "kdnb.plots.figure", "SIZE": "kdnb.plots.figure"}


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'kdnb.plots' has no attribute {name!r}")
