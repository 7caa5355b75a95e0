"""The figure of one or more training runs: loss terms per step, accuracy per epoch, sparsity.

Runs belong to *arms*: a run's title without its round ("finetune 2/3 (unstructured)" is a round of the
arm "finetune (unstructured)"). Rounds of one arm follow one another on the step axis (a dashed line
separates them, their rounds are marked above the loss panel). A baseline ("scratch" and "pseudo" beside
"distill", "control" beside "finetune") is overlaid on the run it compares with, from that run's start, and
another seed of an arm already drawn is overlaid on that arm's first run. Each arm has one colour and one
legend entry, placed outside the data; an arm with several seeds draws them thin and their mean bold.
Accuracy and sparsity keep their 0-100 % axes. Every panel counts optimizer steps (accuracy is marked at
the end of each epoch), so runs of different epoch lengths line up.

`HistoryFigure` updates its lines in place. A live figure (``live=True``) also keeps its axes still while the
data fit in them, so a redraw only repaints the lines over a saved background (matplotlib's blitting):
cheap enough for the live chart to redraw every second. `plot_history` draws a finished history once.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kdnb.engine.results import drawer
from kdnb.engine.history import History
from kdnb.plots.figure import new_figure

# Fixed colours per loss term so "kd" is the same colour in every chart of a notebook.
TERM_COLORS = {"loss": "black", "ce": "tab:blue", "kd": "tab:orange", "hint": "tab:green", "at": "tab:green",
               "tckd": "tab:purple", "nckd": "tab:brown"}
SPARE_COLORS = ("tab:red", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")
RUN_COLORS = ("tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown")
BASELINE_COLORS = {"scratch": "tab:gray", "control": "tab:gray", "pseudo": "tab:purple"}
BASELINES = tuple(BASELINE_COLORS)  # runs that compare with the run before them: drawn over it, from its start
ROUND = re.compile(r"^\d+/\d+$")  # "2/3": the round of an arm
ROUND_STEPS = [1, 2, 2.5, 5, 10]  # tick spacings: 0.5, 1, 2.5, 5, 10, 20, 25, 50, 100 ...
MAX_POINTS = 400  # per curve: longer runs are averaged in bins, which also smooths per-batch noise
PERCENT_PANELS = ("accuracy", "sparsity")  # fixed 0-100 % axes: a flat series reads as flat, not as noise


@dataclass
class Run:
    """One run on the chart: its title, its (possibly still growing) history, its sparsity as
    (step within the run, fraction) pairs, and the steps it plans (0: unknown)."""

    title: str
    history: History
    sparsity: list[tuple[int, float]] = field(default_factory=list)
    epoch_steps: list[int] = field(default_factory=list)  # the run's step count at each epoch's end
    planned_steps: int = 0

    @property
    def is_baseline(self) -> bool:
        return self.title.split(" ")[0] in BASELINES

    @property
    def arm(self) -> str:
        """The title without its round: the rounds of one schedule are one arm."""
        return " ".join(word for word in self.title.split() if not ROUND.match(word))

    @property
    def is_round(self) -> bool:
        return any(ROUND.match(word) for word in self.title.split())

    def steps_at_epochs(self) -> np.ndarray:
        """The step at which each logged epoch ended (evenly spread when the run did not record them)."""
        count = self.history.num_epochs
        if len(self.epoch_steps) >= count:
            return np.asarray(self.epoch_steps[:count], dtype=float)
        per_epoch = self.history.num_steps / max(self.history.num_epochs, 1)
        return per_epoch * np.arange(1, count + 1)

    @classmethod
    def from_history(cls, title: str, history: History) -> Run:
        """A finished run; its sparsity (if a schedule logged one) is placed at each epoch's last step."""
        run = cls(title, history)
        ends = run.steps_at_epochs()
        run.sparsity = list(zip(ends.astype(int).tolist(), history.epochs.get("sparsity", [])))
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


@dataclass
class Placed:
    """Where a run sits on the chart: its first step, its arm's colour, and whether other seeds share its arm."""

    run: Run
    start: int
    color: str
    seeds: int  # runs of the same arm overlaid from the same start (1: a single run)
    lead: bool  # marked above the loss panel (not a baseline, not a repeat)


def place(runs: Sequence[Run]) -> list[Placed]:
    """Each run's start and colour: rounds and new arms follow the runs before them; a baseline overlays the
    run it compares with; a repeat of an arm (another seed) overlays that arm's first run."""
    starts: dict[str, int] = {}  # arm -> its first run's start
    colors: dict[str, str] = {}
    end = anchor = 0  # where the next new run starts; where the latest compared run started
    placed = []
    for run in runs:
        arm = run.arm
        if run.is_baseline:
            start = anchor
        elif arm in starts and not run.is_round:
            start = anchor = starts[arm]
        else:
            start = anchor = end
            starts.setdefault(arm, start)
        if arm not in colors:
            leads = sum(1 for name in colors if name.split(" ")[0] not in BASELINES)
            colors[arm] = BASELINE_COLORS.get(arm.split(" ")[0]) or RUN_COLORS[leads % len(RUN_COLORS)]
        lead = not run.is_baseline and (run.is_round or sum(p.run.arm == arm for p in placed) == 0)
        placed.append(Placed(run, start, colors[arm], 1, lead))
        end = max(end, start + max(run.history.num_steps, run.planned_steps))
    for item in placed:
        if not item.run.is_round:
            item.seeds = sum(other.run.arm == item.run.arm and not other.run.is_round for other in placed)
    return placed


class HistoryFigure:
    """A figure with a loss panel, an accuracy panel and (when a run reports it) a sparsity panel.

    ``update(runs, note)`` moves existing lines to the new data and adds lines only for new runs or terms;
    ``note`` is a line of text above the panels (the live chart's phase: "rebuild: layer 7 of 52").
    With ``live=True`` the lines are drawn over a saved background that is redrawn only when an axis
    limit, a legend or the layout changes (`render`).
    """

    def __init__(self, figure: Any = None, live: bool = False):
        self.figure = figure if figure is not None else new_figure(live=True)
        self.live = live
        self._panels: dict[str, Any] = {}
        self._artists: dict[tuple, Any] = {}
        self._legends: dict[str, tuple] = {}
        self._term_colors: dict[str, str] = dict(TERM_COLORS)
        self._owners: dict[tuple[str, str], tuple] = {}  # (panel, legend entry) -> the artist that carries it
        self._short_titles: dict[str, str] = {}
        self._arm_names: dict[str, str] = {}  # arm -> what tells it apart from the others, for the legends
        self._note: Any = None
        self._waiting: Any = None  # the accuracy panel's text until its first point
        self._background: Any = None  # the saved pixels under the lines (live figures)
        self._limits: dict[str, tuple] = {}

    # ---- drawing ----

    def update(self, runs: Sequence[Run], note: str = "") -> Any:
        """Draw ``runs`` (in order) and ``note``, and return the matplotlib Figure."""
        self._layout(with_sparsity=any(run.sparsity for run in runs))
        placed = place(runs)
        self._short_titles = short_titles([item.run.title for item in placed if item.lead])
        arms = list(dict.fromkeys(item.run.arm for item in placed))
        self._arm_names = short_titles(arms) if len(arms) > 1 else {}
        for index, item in enumerate(placed):
            self._draw_loss(index, item)
            self._draw_accuracy(index, item)
            if item.run.sparsity:
                self._draw_sparsity(index, item)
        self._draw_means(placed)
        self._waiting.set_visible(not any(item.run.history.epochs.get(name) for item in placed
                                          for name in ("val_acc", "train_acc")))
        self._note.set_text(note)
        self._set_limits(placed)
        self._set_legends()
        return self.figure

    def render(self) -> Any:
        """Paint the figure on its canvas: in full when something outside the lines changed (or the figure is
        static), else only the moving artists over the saved background. Returns the canvas."""
        canvas = self.figure.canvas
        if not self.live:
            canvas.draw()
            return canvas
        if self._background is None:
            canvas.draw()  # the animated artists are left out: this is the background
            self._background = canvas.copy_from_bbox(self.figure.bbox)
        else:
            canvas.restore_region(self._background)
        renderer = canvas.get_renderer()
        for artist in self._moving():
            if artist.get_visible():
                artist.draw(renderer)
        return canvas

    def _moving(self) -> list[Any]:
        return [*self._artists.values(), self._note, self._waiting]

    def _stale(self) -> None:
        self._background = None

    def _layout(self, with_sparsity: bool) -> None:
        names = ("loss", "accuracy", "sparsity") if with_sparsity else ("loss", "accuracy")
        if tuple(self._panels) == names:
            return
        from matplotlib.ticker import MaxNLocator

        self.figure.clear()
        self._artists.clear()
        self._legends.clear()
        self._owners.clear()
        self._limits.clear()
        self._stale()
        grid = self.figure.add_gridspec(1, len(names), width_ratios=[1.6, 1, 1][:len(names)])
        loss = self.figure.add_subplot(grid[0])
        self._panels = {"loss": loss, "accuracy": self.figure.add_subplot(grid[1], sharex=loss)}
        if with_sparsity:  # same steps as the loss panel, so a pruning step lines up with its loss
            self._panels["sparsity"] = self.figure.add_subplot(grid[2], sharex=loss)
        # The legends sit under the panels, outside the data.
        self.figure.subplots_adjust(left=0.065, right=0.985, bottom=0.26, top=0.86, wspace=0.28)
        acc = self._panels["accuracy"]
        loss.set_xlabel("step", fontsize=9)
        loss.set_ylabel("loss")
        acc.set_xlabel("step (a point per epoch)", fontsize=9)
        acc.set_ylabel("accuracy (%)")
        acc.set_title("validation accuracy", fontsize=9)
        waiting = "a point at the end\nof each epoch" if self.live else "no accuracy logged"
        self._waiting = acc.text(0.5, 0.5, waiting, transform=acc.transAxes, ha="center", va="center", fontsize=9,
                                 color="0.55", animated=self.live)  # drawn per frame: hiding it costs no redraw
        if with_sparsity:
            sparsity = self._panels["sparsity"]
            sparsity.set_xlabel("step", fontsize=9)
            sparsity.set_ylabel("sparsity (%)")
            sparsity.set_title("pruned weights", fontsize=9)
        for name, ax in self._panels.items():
            # Five ticks per axis read as well as nine and lay out a third faster: text is most of a redraw.
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True, steps=ROUND_STEPS))
            ax.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=ROUND_STEPS))
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.25)
            if name in PERCENT_PANELS:
                ax.set_ylim(0, 100)
        self._note = self.figure.text(0.5, 0.975, "", ha="center", va="top", fontsize=10, color="0.2",
                                      animated=self.live)

    def _artist(self, key: tuple, make: Any) -> Any:
        if key not in self._artists:
            artist = make()
            artist.set_animated(self.live)  # drawn over the background at each frame
            self._artists[key] = artist
            self._stale()  # a new entry may join a legend
        return self._artists[key]

    def _label(self, panel: str, name: str, key: tuple) -> str:
        """``name`` for the first artist of a panel that shows it; hidden from the legend for the others, so
        each entry is listed once."""
        owner = self._owners.setdefault((panel, name), key)
        return name if owner == key else "_" + name

    def _draw_loss(self, index: int, item: Placed) -> None:
        run = item.run
        for term in run.history.steps:
            if run.is_baseline and term != "loss":
                continue  # a baseline compares by its loss; its other terms would be more grey lines
            line = self._artist(("loss", index, term), lambda: self._loss_line(item, term))
            line.set(label=self._label("loss", self._loss_name(item, term), ("loss", index, term)),
                     **({"lw": 0.6, "alpha": 0.45} if item.seeds > 1 else {}))
            x, y = binned(run.history.steps[term])
            line.set_data(x + item.start, y)
        self._run_marker(index, item)

    def _loss_name(self, item: Placed, term: str) -> str:
        """A term of the compared runs by its name ("kd"); a baseline's loss by its arm ("scratch")."""
        return self._arm_names.get(item.run.arm, item.run.arm) if item.run.is_baseline else term

    def _loss_line(self, item: Placed, term: str) -> Any:
        """A loss term's line: the term's colour for the arms compared against, the arm's colour (dashed, on
        top, so it shows over the curve it compares with) for a baseline; a seed of several is drawn thin."""
        if item.run.is_baseline:
            style = {"color": item.color, "ls": (0, (4, 2)), "lw": 1.2, "zorder": 3}
        else:
            if term not in self._term_colors:
                spare = len(self._term_colors) - len(TERM_COLORS)
                self._term_colors[term] = SPARE_COLORS[spare % len(SPARE_COLORS)]
            style = {"color": self._term_colors[term], "lw": 1.1 if term == "loss" else 0.9}
        return self._panels["loss"].plot([], [], **style)[0]

    def _run_marker(self, index: int, item: Placed) -> None:
        """A dashed line where a round starts (after the first) and its name above the loss panel."""
        if not item.lead:
            return
        ax = self._panels["loss"]
        if item.start > 0:
            self._artist(("start", index), lambda: ax.axvline(item.start + 0.5, color="0.5", ls="--", lw=0.8))
        text = self._artist(("title", index), lambda: ax.text(item.start + 0.5, 1.02, "", fontsize=9, ha="left",
                                                              va="bottom", transform=ax.get_xaxis_transform()))
        text.set_text(self._short_titles.get(item.run.title, item.run.title))

    def _draw_accuracy(self, index: int, item: Placed) -> None:
        ax, run = self._panels["accuracy"], item.run
        arm = self._arm_names.get(run.arm, run.arm)
        name, style, label = "val_acc", "-", arm
        if name not in run.history.epochs and "train_acc" in run.history.epochs:
            name, style, label = "train_acc", "--", f"{arm} (train)"
        values = run.history.epochs.get(name, [])
        line = self._artist(("acc", index), lambda: ax.plot([], [], style, color=item.color, ms=3.5,
                                                            clip_on=False)[0])
        if item.seeds > 1:  # thin: the bold mean of the seeds carries the legend entry
            line.set(lw=0.7, alpha=0.5, marker="", label="_" + label)
        else:
            line.set(lw=1.5, alpha=1.0, marker="o", label=self._label("accuracy", label, ("acc", index)))
        line.set_data(item.start + run.steps_at_epochs()[:len(values)], 100 * np.asarray(values, dtype=float))
        if item.lead and item.start > 0:
            self._artist(("epoch start", index), lambda: ax.axvline(item.start + 0.5, color="0.5", ls="--", lw=0.8))

    def _draw_means(self, placed: Sequence[Placed]) -> None:
        """The bold mean of an arm's seeds, per epoch, over the seeds that have reached that epoch."""
        by_arm: dict[str, list[Placed]] = {}
        for item in placed:
            if item.seeds > 1:
                by_arm.setdefault(item.run.arm, []).append(item)
        ax = self._panels["accuracy"]
        for arm, items in by_arm.items():
            series = [item.run.history.epochs.get("val_acc", []) for item in items]
            length = max(map(len, series))
            means = [100 * np.mean([s[i] for s in series if len(s) > i]) for i in range(length)]
            steps = items[0].run.steps_at_epochs()
            count = min(length, len(steps))
            line = self._artist(("mean", arm), lambda: ax.plot([], [], "-", color=items[0].color, lw=2.2,
                                                               marker="o", ms=3.5, clip_on=False)[0])
            line.set_label(self._arm_names.get(arm, arm))
            line.set_data(items[0].start + steps[:count], means[:count])

    def _draw_sparsity(self, index: int, item: Placed) -> None:
        ax, run = self._panels["sparsity"], item.run
        line = self._artist(("sparsity", index), lambda: ax.plot([], [], color=item.color, clip_on=False)[0])
        line.set_label(self._label("sparsity", self._arm_names.get(run.arm, run.arm), ("sparsity", index)))
        line.set_data([item.start + step for step, _ in run.sparsity], [100 * value for _, value in run.sparsity])

    # ---- axes and legends ----

    def _set_limits(self, placed: Sequence[Placed]) -> None:
        """The steps of every run (while it runs, the steps it plans, so a live axis does not grow at every
        frame); the loss from 0 (or its minimum) to its maximum, kept while the data fit and fill half of it."""
        running = [item.run.history.status == "running" for item in placed]
        extent = max((item.start + max(item.run.history.num_steps, item.run.planned_steps if on else 0)
                      for item, on in zip(placed, running)), default=0)  # a finished run: its own steps
        self._set("x", self._panels["loss"].set_xlim, (0, max(extent, 1) + 0.5))
        values = [line.get_ydata() for key, line in self._artists.items() if key[0] == "loss" and len(line.get_ydata())]
        if not values:
            return
        data = np.concatenate(values)
        data = data[np.isfinite(data)]
        if not len(data):
            return
        low, high = min(0.0, float(data.min())), float(data.max())
        span = max(high - low, 1e-6)
        wanted = (low - (0.04 * span if low < 0 else 0), high + 0.06 * span)
        current = self._limits.get("loss y")
        fits = current is not None and current[0] <= wanted[0] and wanted[1] <= current[1] \
            and (wanted[1] - wanted[0]) >= 0.5 * (current[1] - current[0])
        if not (self.live and fits):
            self._set("loss y", self._panels["loss"].set_ylim, wanted)

    def _set(self, name: str, setter: Any, limits: tuple) -> None:
        if self._limits.get(name) != limits:
            setter(*limits)
            self._limits[name] = limits
            self._stale()

    def _set_legends(self) -> None:
        """One legend per panel, under it, each entry once; one accuracy curve needs none (the title names it).
        The panels leave room below for the tallest legend."""
        for name, ax in self._panels.items():
            handles = tuple(line for line in ax.get_lines() if not line.get_label().startswith("_"))
            wanted = handles if (len(handles) > 1 or (name == "loss" and handles)) else ()
            if self._legends.get(name) == wanted:
                continue
            self._legends[name] = wanted
            self._stale()
            if ax.get_legend() is not None:
                ax.get_legend().remove()
            if wanted:
                ax.legend(handles=list(wanted), fontsize=8, frameon=False, loc="upper center",
                          bbox_to_anchor=(0.5, -0.2), ncol=self._columns(name, wanted), handlelength=1.6,
                          columnspacing=1.0)
        rows = max((math.ceil(len(wanted) / self._columns(name, wanted)) for name, wanted in self._legends.items()
                    if wanted), default=1)
        self._set("bottom", lambda bottom: self.figure.subplots_adjust(bottom=bottom), (0.2 + 0.055 * rows,))

    @staticmethod
    def _columns(panel: str, handles: Sequence[Any]) -> int:
        """As many legend columns as the panel's width holds (about 45 characters of text under the loss)."""
        widest = max(len(line.get_label()) for line in handles) + 5
        return max(1, min(len(handles), (45 if panel == "loss" else 28) // widest))


@drawer(History)
def plot_history(history: History | Mapping[str, History], title: str = "train") -> Any:
    """A static figure of one history, or of several named runs drawn in order (e.g. a result's runs).

    Returns the matplotlib Figure: a notebook shows it as the cell's value; save it with
    ``fig.savefig("history.png")``.
    """
    runs_by_title = {title: history} if isinstance(history, History) else dict(history)
    runs = [Run.from_history(name, record) for name, record in runs_by_title.items()]
    return HistoryFigure(new_figure()).update(runs)
