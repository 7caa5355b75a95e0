"""The one way kdnb makes a matplotlib figure, and the size they share."""
from __future__ import annotations

from typing import Any

SIZE = (9.6, 3.4)  # inches, at DPI: a notebook's width, one row of panels
DPI = 100


def new_figure(size: tuple[float, float] = SIZE, *, live: bool = False) -> Any:
    """An empty matplotlib Figure of ``size`` inches.

    ``live=False`` (a result's static picture): a pyplot figure, so a notebook's inline backend knows how
    to show it, closed at once, so it shows once, as the cell's value and not again when the cell ends.
    ``live=True`` (the live chart, the explorers, redrawn in place): an Agg figure outside pyplot, with no
    GUI, no global state and no display of its own; its owner renders it to PNG.
    """
    if live:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=size, dpi=DPI)
        FigureCanvasAgg(figure)
        return figure
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=size, dpi=DPI)
    plt.close(figure)
    return figure
