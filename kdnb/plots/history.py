"""The figure of one or more training runs: loss terms per step, accuracy per epoch, sparsity.

Runs of one verb call (the rounds of iterative pruning) follow one another on the step axis: a
dashed line separates them, their titles stand above the loss panel and the accuracy legend names
them. A baseline run ("scratch" beside "distill", "control" beside "finetune") is overlaid on the
run before it, from step 0, in its own colour and legend entry. Every panel counts optimizer steps
(accuracy is marked at the end of each epoch), so runs of different epoch lengths line up.
`HistoryFigure` updates its lines in place, so the live chart can redraw it several times a second;
`plot_history` draws a finished history once.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kdnb.engine.results import drawer
from kdnb.engine.history import History
from kdnb.plots.figure import new_figure

# Fixed colours per loss term so "kd" is the same colour in every chart of a notebook.
TERM_COLORS = {"loss": "black", "ce": "tab:blue", "kd": "tab:orange", "hint": "tab:green", "cos": "tab:green", "at": "tab:green",
               "tckd": "tab:purple", "nckd": "tab:brown"}
SPARE_COLORS = ("tab:red", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")
RUN_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
BASELINES = ("scratch", "control")  # runs that compare with the run before them: drawn over it, from step 0
BASELINE_COLOR = "tab:gray"  # in every panel; no loss term has it
# Where the curves usually are not: losses fall, accuracy and sparsity rise. A fixed place keeps the legend
# still between redraws ("best" would move it, and searches every point at every redraw).
LEGEND_PLACES = {"loss": "upper right", "accuracy": "lower right", "sparsity": "lower right"}
ROUND_STEPS = [1, 2, 2.5, 5, 10]  # tick spacings: 0.5, 1, 2.5, 5, 10, 20, 25, 50, 100 ...
MAX_POINTS = 400  # per curve: longer runs are averaged in bins, which also smooths per-batch noise


@dataclass
class Run:
    """One run on the chart: its title, its (possibly still growing) history, and its sparsity as
    (step within the run, fraction) pairs."""

    title: str
    history: History
    sparsity: list[tuple[int, float]] = field(default_factory=list)
    epoch_steps: list[int] = field(default_factory=list)  # the run's step count at each epoch's end

    @property
    def is_baseline(self) -> bool:
        return self.title.split(" ")[0] in BASELINES

    def steps_at_epochs(self) -> np.ndarray:
        """The step at which each logged epoch ended (evenly spread when the run did not record them)."""
        count = self.history.num_epochs
        if len(self.epoch_steps) >= count:
            return np.asarray(self.epoch_steps[:count], dtype=float)
        per_epoch = self.history.num_steps / max(count, 1)
        return per_epoch * np.arange(1, count + 1)

    @classmethod
    def from_history(cls, title: str, history: History) -> Run:
        """A finished run; its sparsity (if a schedule logged one) is placed at each epoch's last step."""
        run = cls(title, history)
        ends = run.steps_at_epochs()
        run.sparsity = [(int(ends[i]), v) for i, v in enumerate(history.epochs.get("sparsity", []))]
        return run


def binned(values: Sequence[float], max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(step, value) of a per-step series, averaged over equal bins when longer than ``max_points``."""
    y = np.asarray(values, dtype=float)
    size = math.ceil(len(y) / max_points) if len(y) > max_points else 1
    if size == 1:
        return np.arange(1, len(y) + 1, dtype=float), y
    starts = np.arange(0, len(y), size)
    means = np.add.reduceat(y, starts) / np.diff(np.append(starts, len(y)))
    centers = starts + (np.minimum(starts + size, len(y)) - starts + 1) / 2
    return centers, means


def short_titles(titles: Sequence[str]) -> dict[str, str]:
    """Several runs side by side ("finetune 1/3 (unstructured)", "finetune 2/3 (unstructured)") are
    marked by what tells them apart ("1/3", "2/3"): full titles would run into each other."""
    if len(titles) < 2:
        return {}
    common = set(titles[0].split()).intersection(*(title.split() for title in titles[1:]))
    short = {title: " ".join(word for word in title.split() if word not in common) for title in titles}
    return {title: label or title for title, label in short.items()}


class HistoryFigure:
    """A figure with a loss panel, an accuracy panel and (when a run reports it) a sparsity panel.

    ``update(runs)`` moves existing lines to the new data and adds lines only for new runs or terms,
    which keeps a redraw cheap enough for a live chart.
    """

    def __init__(self, figure: Any = None):
        self.figure = figure if figure is not None else new_figure(live=True)
        self._panels: dict[str, Any] = {}
        self._artists: dict[tuple, Any] = {}
        self._legends: dict[str, tuple] = {}
        self._term_colors: dict[str, str] = dict(TERM_COLORS)
        self._labelled: set[str] = set()
        self._short_titles: dict[str, str] = {}

    def update(self, runs: Sequence[Run]) -> Any:
        """Draw ``runs`` (in order) and return the matplotlib Figure."""
        self._layout(with_sparsity=any(run.sparsity for run in runs))
        self._short_titles = short_titles([run.title for run in runs if not run.is_baseline])
        start = end = 0  # a run starts where the runs before it ended; a baseline where the run it follows began
        for index, run in enumerate(runs):
            start = start if run.is_baseline else end
            self._draw_loss(index, run, start)
            self._draw_accuracy(index, run, start)
            if run.sparsity:
                self._draw_sparsity(index, run, start)
            end = max(end, start + run.history.num_steps)
        for name, ax in self._panels.items():
            ax.relim()
            ax.autoscale_view()
            handles = tuple(line for line in ax.get_lines() if not line.get_label().startswith("_"))
            # One accuracy or sparsity curve needs no legend: the panel's title names it.
            if (len(handles) > 1 or name == "loss") and self._legends.get(name) != handles:
                ax.legend(handles=list(handles), fontsize=8, loc=LEGEND_PLACES[name], frameon=False)
                self._legends[name] = handles
        return self.figure

    def _layout(self, with_sparsity: bool) -> None:
        names = ("loss", "accuracy", "sparsity") if with_sparsity else ("loss", "accuracy")
        if tuple(self._panels) == names:
            return
        from matplotlib.ticker import MaxNLocator

        self.figure.clear()
        self._artists.clear()
        self._legends.clear()
        self._labelled.clear()
        grid = self.figure.add_gridspec(1, len(names), width_ratios=[1.6, 1, 1][:len(names)])
        loss = self.figure.add_subplot(grid[0])
        self._panels = {"loss": loss, "accuracy": self.figure.add_subplot(grid[1])}
        if with_sparsity:  # same steps as the loss panel, so a pruning step lines up with its loss
            self._panels["sparsity"] = self.figure.add_subplot(grid[2], sharex=loss)
        self.figure.subplots_adjust(left=0.065, right=0.985, bottom=0.15, top=0.86, wspace=0.28)
        acc = self._panels["accuracy"]
        loss.set_xlabel("step")
        loss.set_ylabel("loss")
        acc.set_xlabel("step (a point per epoch)")
        acc.set_ylabel("accuracy (%)")
        acc.set_title("validation accuracy", fontsize=9)
        if with_sparsity:
            sparsity = self._panels["sparsity"]
            sparsity.set_xlabel("step")
            sparsity.set_ylabel("sparsity (%)")
            sparsity.set_title("pruned weights", fontsize=9)
        for ax in self._panels.values():
            # Five ticks per axis read as well as nine and lay out a third faster: text is most of a redraw.
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True, steps=ROUND_STEPS))
            ax.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=ROUND_STEPS))
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.25)

    def _artist(self, key: tuple, make: Any) -> Any:
        if key not in self._artists:
            self._artists[key] = make()
        return self._artists[key]

    def _draw_loss(self, index: int, run: Run, offset: int) -> None:
        for term in run.history.steps:
            line = self._artist(("loss", index, term), lambda: self._baseline_line(index, run, term)
                                if run.is_baseline else self._term_line(term))
            x, y = binned(run.history.steps[term])
            line.set_data(x + offset, y)
        self._run_marker(index, run, offset)

    def _term_line(self, term: str) -> Any:
        """A new line for a loss term: same colour in every run, in the legend once."""
        if term not in self._term_colors:
            spare = len(self._term_colors) - len(TERM_COLORS)
            self._term_colors[term] = SPARE_COLORS[spare % len(SPARE_COLORS)]
        label = "_" + term if term in self._labelled else term
        self._labelled.add(term)
        return self._panels["loss"].plot([], [], color=self._term_colors[term], lw=1.1 if term == "loss" else 0.9,
                                         label=label)[0]

    def _baseline_line(self, index: int, run: Run, term: str) -> Any:
        """A baseline's loss: the run's own colour, dotted, named by the run (and the term, if several)."""
        label = run.title if len(run.history.steps) == 1 else f"{run.title} {term}"
        return self._panels["loss"].plot([], [], color=BASELINE_COLOR, ls=":", lw=1.2, label=label)[0]

    def _run_marker(self, index: int, run: Run, offset: int) -> None:
        """A dashed line where the run starts (after the first) and its title above the loss panel;
        a baseline has neither (it is overlaid, and its legend entry names it)."""
        ax = self._panels["loss"]
        if run.is_baseline:
            return
        if index > 0:
            self._artist(("start", index), lambda: ax.axvline(offset + 0.5, color="0.5", ls="--", lw=0.8))
        text = self._artist(("title", index), lambda: ax.text(offset + 0.5, 1.02, "", fontsize=9, ha="left",
                                                              va="bottom", transform=ax.get_xaxis_transform()))
        text.set_text(self._short_titles.get(run.title, run.title))

    def _draw_accuracy(self, index: int, run: Run, offset: int) -> None:
        ax = self._panels["accuracy"]
        name, style, label = "val_acc", "-", run.title
        if name not in run.history.epochs and "train_acc" in run.history.epochs:
            name, style, label = "train_acc", "--", f"{run.title} (train)"
        values = run.history.epochs.get(name, [])
        color = BASELINE_COLOR if run.is_baseline else RUN_COLORS[index % len(RUN_COLORS)]
        line = self._artist(("acc", index), lambda: ax.plot([], [], style, color=color, marker="o", ms=3.5,
                                                            label=label)[0])
        line.set_data(offset + run.steps_at_epochs()[:len(values)], 100 * np.asarray(values, dtype=float))
        if index > 0 and not run.is_baseline:
            self._artist(("epoch start", index), lambda: ax.axvline(offset + 0.5, color="0.5", ls="--", lw=0.8))

    def _draw_sparsity(self, index: int, run: Run, offset: int) -> None:
        ax = self._panels["sparsity"]
        color = RUN_COLORS[index % len(RUN_COLORS)]
        line = self._artist(("sparsity", index), lambda: ax.plot([], [], color=color, label=run.title)[0])
        steps = [offset + step for step, _ in run.sparsity]
        line.set_data(steps, [100 * value for _, value in run.sparsity])


@drawer(History)
def plot_history(history: History | Mapping[str, History], title: str = "train") -> Any:
    """A static figure of one history, or of several named runs drawn in order (e.g. a result's runs).

    Returns the matplotlib Figure: a notebook shows it as the cell's value; save it with
    ``fig.savefig("history.png")``.
    """
    runs_by_title = {title: history} if isinstance(history, History) else dict(history)
    runs = [Run.from_history(name, record) for name, record in runs_by_title.items()]
    return HistoryFigure(new_figure()).update(runs)
