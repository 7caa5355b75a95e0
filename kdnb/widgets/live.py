"""The live loss chart: a subscriber to a run's events that redraws one PNG while the model trains.

One display output is created on the first redraw and then updated in place (an
``update_display_data`` message, supported by JupyterLab, Notebook 7, VS Code and Colab) —
never cleared and re-created, so nothing flickers. The output is a plain PNG, so a saved or
nbconvert-executed notebook keeps the final picture without any widget state. When each run ends,
a one-line summary is printed; without a notebook frontend that line is all the chart shows.

Frames are throttled by wall time, never by step counts: a first frame at the call's first event,
then at least one a second (also between training steps: pruning's phases, "rebuild: layer 7 of 52",
draw on their own events), each repainting only the lines over a saved background (`HistoryFigure`'s
blitting), so the redraws stay within a few percent of the run (``bench/chart_overhead.py``).
"""
from __future__ import annotations

import base64
import statistics
import time
import uuid

from kdnb.engine.events import Callback, RunState
from kdnb.errors import warn
from kdnb.plots.history import HistoryFigure, Run
from kdnb.progress import phase_text
from kdnb.widgets._support import encoded, in_kernel


def summary_line(run: Run) -> str:
    """``distill: completed, 5 epochs (115 steps), loss 2.301 -> 0.412, val_acc 91.20%``: deterministic, from
    the first step's loss to the last epoch's mean loss and accuracy."""
    history = run.history
    epochs, steps = history.num_epochs, history.num_steps
    parts = [f"{run.title}: {history.status}, {epochs} epoch{'s' * (epochs != 1)} ({steps} step{'s' * (steps != 1)})"]
    first, last = history.steps.get("loss", [None])[0], (history.epochs.get("train_loss") or [None])[-1]
    if first is not None:  # the first step's loss -> the last epoch's mean loss
        parts.append(f"loss {first:.4g} -> {last if last is not None else history.steps['loss'][-1]:.4g}")
    for name in ("val_acc", "train_acc"):
        if history.epochs.get(name):
            parts.append(f"{name} {100 * history.epochs[name][-1]:.2f}%")
            break
    if run.sparsity:
        parts.append(f"sparsity {100 * run.sparsity[-1][1]:.1f}%")
    return ", ".join(parts)


_WARM: list[HistoryFigure] = []  # a figure built and rendered ahead, for the next chart to start from


def warm_up() -> None:
    """Import matplotlib and render an empty chart once (fonts, text layout): what the first frame of the
    first chart of a session would otherwise pay, a second or two, before anyone is watching."""
    figure = HistoryFigure(live=True)
    figure.update([])
    encoded(figure.render())
    _WARM[:] = [figure]


class LiveChart(Callback):
    """Loss terms per step, accuracy per epoch and sparsity of the runs of one verb call, live.

    The first frame is drawn ``first_frame`` seconds into the call (a chart within a second of pressing
    run; a call shorter than that only gets its final frame); then frames follow every
    ``min(max_interval, max(1 / max_rate, cost / budget))`` seconds of wall time, where ``cost`` is what a
    redraw typically takes here (the median of the last five): at least one a second, and within ``budget``
    of the run's time while a redraw costs less than ``budget`` seconds. One last frame when each run ends.
    A pruning phase between the training steps (`on_phase`) shows its progress above the panels.

    Args:
        image: draw the PNG chart (default: only inside a Jupyter kernel); False prints the summaries only.
        max_rate: redraws per second at most.
        budget: the fraction of the wall time the steady redraws may take.
        first_frame: seconds into the call when the first frame is drawn.
        max_interval: seconds between two frames at most.

    Attributes:
        redraws: how many PNGs were rendered so far (the last one stays in the output).
        runs: the runs drawn, in order.
    """

    def __init__(self, image: bool | None = None, max_rate: float = 2.0, budget: float = 0.04,
                 first_frame: float = 0.0, max_interval: float = 0.9):
        self.image = in_kernel() if image is None else bool(image)
        self.min_interval = 1.0 / max_rate
        self.max_interval = max_interval
        self.budget = budget
        self.runs: list[Run] = []
        self.redraws = 0
        self.note = ""  # the phase in progress, above the panels
        self._figure: HistoryFigure | None = None
        self._display_id: str | None = None
        self.first_frame = first_frame
        self._costs: list[float] = []  # seconds the redraws took
        self._next_draw: float | None = None  # perf_counter time of the next frame; None before the call's start

    def _started(self) -> None:
        if self._next_draw is None:
            self._next_draw = time.perf_counter() + self.first_frame

    def on_run_start(self, state: RunState) -> None:
        self._started()
        self.note = ""
        self.runs.append(Run(state.title, state.history, planned_steps=state.epochs * state.steps_per_epoch))
        if self.image and self._due():  # the first frame at once: the run's axes, before its first step
            self._draw()

    def on_phase(self, state: RunState) -> None:
        self._started()
        self.note = phase_text(state)
        if self.image and self._due():
            self._draw()

    def on_step_end(self, state: RunState) -> None:
        if "sparsity" in state.extra:
            self.runs[-1].sparsity.append((state.step, float(state.extra["sparsity"])))
        if self.note:
            self.note = ""
        if self.image and self._due():
            self._draw()

    def on_epoch_end(self, state: RunState) -> None:
        self.runs[-1].epoch_steps.append(state.history.num_steps)
        if self.image and self._due():
            self._draw()

    def _due(self) -> bool:
        return self._next_draw is not None and time.perf_counter() >= self._next_draw

    def _interval(self) -> float:
        """Seconds between steady frames: ``1 / max_rate``, or longer so that a typical redraw (the
        median of the last few) takes ``budget`` of the time, but never longer than ``max_interval``."""
        if not self._costs:
            return self.min_interval
        return min(self.max_interval, max(self.min_interval, statistics.median(self._costs[-5:]) / self.budget))

    def on_run_end(self, state: RunState) -> None:
        self.note = ""
        if self.image:
            self._draw(final=True)
        from tqdm.auto import tqdm

        tqdm.write(summary_line(self.runs[-1]))  # below any open progress bar, not through it

    def _draw(self, final: bool = False) -> None:
        """Render and show the chart; a failure to draw warns once and never stops the training."""
        started = time.perf_counter()
        try:
            if self._figure is None:
                self._figure = _WARM.pop() if _WARM else HistoryFigure(live=True)
            self._figure.update(self.runs, self.note)
            picture = encoded(self._figure.render())
            self._show(picture, final)
        except Exception as error:  # noqa: BLE001 — the chart is a spectator; training goes on without it
            warn(f"the live chart stopped drawing ({type(error).__name__}: {error}); "
                 f"training continues. Set KDNB_PLOT=0 to turn it off.", RuntimeWarning)  # at the user's line
            self.image = False
            return
        finished = time.perf_counter()
        self._costs.append(finished - started)  # the first also builds the figure: an overestimate, on the safe side
        self.redraws += 1
        self._next_draw = finished + self._interval()

    def _show(self, picture: bytes, final: bool) -> None:
        from IPython.display import display, update_display

        if final:
            text = "\n".join(summary_line(run) for run in self.runs)
        else:
            text = f"live chart of {self.runs[-1].title}" if self.runs else f"live chart: {self.note}"
        bundle = {"image/png": base64.b64encode(picture).decode("ascii"), "text/plain": text}
        if self._display_id is None:
            self._display_id = uuid.uuid4().hex
            display(bundle, raw=True, display_id=self._display_id)
        else:
            update_display(bundle, raw=True, display_id=self._display_id)
