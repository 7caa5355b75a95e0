"""Static matplotlib figures of kdnb's results (no widgets). Nothing here loads until it is used:
``kdnb.plots.plot_history`` imports matplotlib on first access."""
from __future__ import annotations

import importlib
from typing import Any

_NAMES = {"plot_history": "kdnb.plots.history", "HistoryFigure": "kdnb.plots.history"}


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'kdnb.plots' has no attribute {name!r}")
