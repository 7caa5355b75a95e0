"""The figure of a distillation result (`DistillResult.plot()`): did the student learn from its teacher?

Three panels: the distilled run's loss terms per step (CE and KD apart), val accuracy per epoch
(teacher as a line, scratch and distilled students), and top-1 agreement with the teacher per epoch.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from kdnb.engine.distill.result import DistillResult
from kdnb.engine.results import drawer
from kdnb.plots.figure import SIZE, new_figure
from kdnb.plots.history import SPARE_COLORS, TERM_COLORS, binned

STUDENT_COLORS = {"scratch": "tab:gray", "distilled": "tab:orange"}


@drawer(DistillResult)
def plot_distill(result: DistillResult) -> Any:
    """A static matplotlib Figure of a `DistillResult`; save it with ``fig.savefig("distill.png")``."""
    figure = new_figure((11.0, SIZE[1]))  # three panels: a little wider than the two of the others
    grid = figure.add_gridspec(1, 3, width_ratios=[1.5, 1, 1])
    loss, accuracy, agreement = (figure.add_subplot(grid[i]) for i in range(3))
    figure.subplots_adjust(left=0.06, right=0.985, bottom=0.15, top=0.88, wspace=0.3)

    spare = iter(SPARE_COLORS)
    for term, values in result.history.steps.items():
        x, y = binned(values)
        color = TERM_COLORS.get(term) or next(spare, "tab:gray")
        loss.plot(x, y, color=color, lw=1.1 if term == "loss" else 0.9, label=term)
    loss.set(title="loss terms (distill)", xlabel="step", ylabel="loss (unweighted terms)")

    runs = {"scratch": result.baseline_history, "distilled": result.history}
    if result.teacher_accuracy is not None:
        accuracy.axhline(100 * result.teacher_accuracy, color="black", ls="--", lw=1.0, label="teacher")
    for ax, name in ((accuracy, "val_acc"), (agreement, "val_agreement")):
        for run, history in runs.items():
            values = history.epochs.get(name, []) if history is not None else []
            if values:
                ax.plot(np.arange(1, len(values) + 1), 100 * np.asarray(values), marker="o", ms=3.5,
                        color=STUDENT_COLORS[run], label=run)
        ax.set(xlabel="epoch", ylabel="%")
        ax.xaxis.get_major_locator().set_params(integer=True)
    accuracy.set_title("val accuracy")
    agreement.set_title("agreement with the teacher")
    for ax in (loss, accuracy, agreement):
        ax.title.set_fontsize(9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.25)
        if ax.get_lines():
            ax.legend(fontsize=8, frameon=False, loc="best")
    return figure
