"""Notebook widgets (ipywidgets 8). Placeholder until the notebook-layer issue lands."""
from __future__ import annotations


def live_chart_for(plot: bool | str) -> object | None:
    """The live chart subscriber for ``plot`` ("auto": only in a notebook), or None."""
    return None
