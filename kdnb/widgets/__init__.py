"""Notebook widgets: the live loss chart (`LiveChart`), the `SparsityExplorer` and the
`TemperatureExplorer`. matplotlib and ipywidgets load only when one of them is first used.

Without ipywidgets the explorers still work from code and show text, with a hint how to install it.
"""
from __future__ import annotations

import importlib
from typing import Any

from kdnb.errors import KdnbError

_NAMES = {
    "LiveChart": "kdnb.widgets.live",
    "SparsityExplorer": "kdnb.widgets.sparsity",
    "TemperatureExplorer": "kdnb.widgets.temperature",
    "in_kernel": "kdnb.env",
}
__all__ = [*_NAMES, "live_chart_for"]


def live_chart_for(plot: bool | str) -> Any:
    """The live chart subscriber a verb gets for its ``plot=`` argument, or None.

    ``"auto"``: a chart only inside a Jupyter kernel (scripts and terminals get none);
    ``True``: always (a text summary where no image can be shown); ``False``: none.
    """
    if plot not in (True, False, "auto"):
        raise KdnbError(f"plot should be True, False or 'auto', got {plot!r}")
    if plot is False:
        return None
    from kdnb.widgets._support import in_kernel  # at call time: tests stand in a kernel by patching it

    if plot == "auto" and not in_kernel():
        return None
    from kdnb.widgets.live import LiveChart

    return LiveChart()


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'kdnb.widgets' has no attribute {name!r}")
