"""Results are data; `kdnb.plots` draws them. A result's ``.plot()`` is the user's spelling (pandas does the
same) and hands the result to the drawer registered for its type; the engine never imports matplotlib or
`kdnb.plots`.

The drawers register themselves when the drawing package loads (``@drawer(PruneResult)`` beside the
function that draws it). ``BACKEND`` names that package, as pandas' ``plotting.backend`` option does: it
is loaded on the first ``.plot()``, so a script that never plots never loads matplotlib.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from kdnb.errors import KdnbError

BACKEND = "kdnb.plots"  # the package whose import registers the drawers
_DRAWERS: dict[type, Callable[..., Any]] = {}


def drawer(result_type: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated ``draw(result, **options) -> Figure`` for ``result_type`` (and its subclasses)."""

    def register(draw_fn: Callable[..., Any]) -> Callable[..., Any]:
        _DRAWERS[result_type] = draw_fn
        return draw_fn

    return register


def _find(result_type: type) -> Callable[..., Any] | None:
    return next((_DRAWERS[cls] for cls in result_type.__mro__ if cls in _DRAWERS), None)


def draw(result: Any, **options: Any) -> Any:
    """The figure of ``result``, drawn by the drawer registered for its type (loading ``BACKEND`` first)."""
    found = _find(type(result))
    if found is None:
        importlib.import_module(BACKEND)
        found = _find(type(result))
    if found is None:
        raise KdnbError(f"no figure is registered for {type(result).__name__}; register one with "
                        f"@kdnb.engine.drawing.drawer({type(result).__name__})")
    return found(result, **options)
