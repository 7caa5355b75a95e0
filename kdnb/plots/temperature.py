"""The temperature explorer's picture: a teacher's class probabilities at T = 1 (outlined) and its soft
labels softmax(z / T) (bars), for one sample. One figure whose bars are resized in place, so a slider
move redraws quickly."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kdnb.plots.figure import new_figure

SIZE = (7.6, 3.2)  # inches: the explorer's image is 760 px wide beside its controls


class SoftLabelFigure:
    """Bars of one sample's soft labels over the classes; ``update`` redraws them in place."""

    def __init__(self, classes: Sequence[str], labelled: bool):
        self.figure = new_figure(SIZE, live=True)
        ax = self.ax = self.figure.add_subplot()
        positions = list(range(len(classes)))
        zeros = [0] * len(classes)
        self._hard = ax.bar(positions, zeros, width=0.8, fill=False, edgecolor="0.45", linestyle="--",
                            label="T = 1 (ordinary output)")
        self._soft = ax.bar(positions, zeros, width=0.55, color="tab:blue", label="soft labels")
        self._values = [ax.text(c, 0, "", ha="center", va="bottom", fontsize=7) for c in positions]
        ax.set_xticks(positions, list(classes), fontsize=8)
        ax.set_xlabel("class" + ("  (orange: the true class)" if labelled else ""))
        ax.set_ylabel("probability")
        ax.set_ylim(0, 1.28)  # headroom above p = 1 for the legend, so it never covers a bar
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.legend(fontsize=8, loc="upper center", ncol=2, frameon=False)
        ax.grid(axis="y", alpha=0.25)
        self.figure.subplots_adjust(left=0.08, right=0.99, bottom=0.16, top=0.9)

    def update(self, soft: Sequence[float], hard: Sequence[float], temperature: float, title: str,
               true_class: int | None = None) -> Any:
        """Show ``soft`` (at ``temperature``) over ``hard`` (T = 1); the true class's bar in orange."""
        for c, (outline, bar, text) in enumerate(zip(self._hard, self._soft, self._values)):
            outline.set_height(hard[c])
            bar.set_height(soft[c])
            bar.set_color("tab:orange" if c == true_class else "tab:blue")
            text.set_position((c, soft[c] + 0.015))
            text.set_text(f"{soft[c]:.2f}" if soft[c] >= 0.005 else "")
        self.ax.get_legend().get_texts()[1].set_text(f"T = {temperature:.1f} (soft labels)")
        self.ax.set_title(title, fontsize=10)
        return self.figure
