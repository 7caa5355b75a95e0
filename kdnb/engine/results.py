"""What every result of a verb shares. Results are data: ``repr`` shows the run's own numbers (cheap);
``summary()`` measures (latency takes a moment) once, on the device of the result's model, and keeps it,
with the measuring function its verb handed it (``measure_with``: a result knows nothing of how models
are measured);
``.plot()`` is the user's spelling (pandas does the same) and hands the result to the drawer registered
for its type, so the engine never imports matplotlib or `kdnb.plots`.

The drawers register themselves when the drawing package loads (``@drawer(PruneResult)`` beside the
function that draws it). ``BACKEND`` names that package, as pandas' ``plotting.backend`` option does: it
is loaded on the first ``.plot()``, so a script that never plots never loads matplotlib.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from kdnb.engine.device import model_device
from kdnb.engine.table import Table
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
                        f"@kdnb.engine.results.drawer({type(result).__name__})")
    return found(result, **options)


class Result:
    """The shared behaviour of `PruneResult` and `DistillResult` (dataclasses that declare ``_comparison``).

    A subclass says what it shows without measuring (`overview`), which models it compares on which data
    (`_compared`), and whose device the measurement uses (`_home`); its verb sets ``measure_with``, a
    ``compare(models, data, **options) -> Table`` (`kdnb.engine.measure.compare`)."""

    _comparison: Any = None
    measure_with: Callable[..., Any] | None = None

    def overview(self) -> Table:
        raise NotImplementedError

    def _compared(self) -> tuple[dict[str, nn.Module], Any]:
        raise NotImplementedError

    def _home(self) -> nn.Module:
        raise NotImplementedError

    def comparison(self, **measure_kwargs: Any) -> Any:
        """``measure_with`` (the verb's `kdnb.engine.measure.compare`) of the result's models, on the device its
        model is on; measured on the first call, then kept (set ``_comparison = None`` to measure again).
        ``measure_kwargs`` (see `kdnb.measure`) measure anew with those options, and are not kept."""
        if self._comparison is not None and not measure_kwargs:
            return self._comparison
        if self.measure_with is None:
            raise KdnbError(f"this {type(self).__name__} was made without a measuring function; measure its "
                            "models with kdnb.compare({...}, val)")
        models, data = self._compared()
        comparison = self.measure_with(models, data, **{"device": model_device(self._home()), **measure_kwargs})
        if not measure_kwargs:
            self._comparison = comparison
        return comparison

    def plot(self, **options: Any) -> Any:
        """A static matplotlib figure of the result (drawn by `kdnb.plots`); ``fig.savefig(...)`` saves it."""
        return draw(self, **options)

    def __repr__(self) -> str:
        return self.overview().to_text()

    def _repr_html_(self) -> str:
        return self.overview().to_html()
