"""The live loss chart: a subscriber to a run's events that redraws one PNG while the model trains.

One display output is created on the first redraw and then updated in place (an
``update_display_data`` message, supported by JupyterLab, Notebook 7, VS Code and Colab) —
never cleared and re-created, so nothing flickers. The output is a plain PNG, so a saved or
nbconvert-executed notebook keeps the final picture without any widget state. When each run ends,
a one-line summary is printed; without a notebook frontend that line is all the chart shows.
"""
from __future__ import annotations

import base64
import time
import uuid
import warnings

from kdnb.engine.events import Callback, RunState
from kdnb.plots.history import HistoryFigure, Run
from kdnb.widgets._support import in_kernel, png


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


class LiveChart(Callback):
    """Loss terms per step, accuracy per epoch and sparsity of the runs of one verb call, live.

    Redraws at most ``max_rate`` times a second, and less often when drawing is slow: the time spent
    drawing stays within ``budget`` of the run's time, plus one last redraw when the run ends (the
    goal is <= 3 % overhead; ``bench/chart_overhead.py`` measures it).

    Args:
        image: draw the PNG chart (default: only inside a Jupyter kernel); False prints the summaries only.
        max_rate: redraws per second at most.
        budget: the largest fraction of the wall time spent drawing.

    Attributes:
        redraws: how many PNGs were rendered so far (the last one stays in the output).
        runs: the runs drawn, in order.
    """

    def __init__(self, image: bool | None = None, max_rate: float = 4.0, budget: float = 0.015):
        self.image = in_kernel() if image is None else bool(image)
        self.min_interval = 1.0 / max_rate
        self.budget = budget
        self.runs: list[Run] = []
        self.redraws = 0
        self._figure: HistoryFigure | None = None
        self._display_id: str | None = None
        self._cost = 0.05  # seconds one redraw takes; measured after the first
        self._run_started = self._spent = self._last_draw = 0.0

    def on_run_start(self, state: RunState) -> None:
        self.runs.append(Run(state.title, state.history))
        self._run_started = self._last_draw = time.perf_counter()
        self._spent = 0.0

    def on_step_end(self, state: RunState) -> None:
        if "sparsity" in state.extra:
            self.runs[-1].sparsity.append((state.step, float(state.extra["sparsity"])))
        if self.image and self._due():
            self._draw()

    def on_epoch_end(self, state: RunState) -> None:
        if self.image and self._due():
            self._draw()

    def _due(self) -> bool:
        """A redraw is due when the last is ``1 / max_rate`` seconds old and drawing once more keeps the
        time spent drawing in this run within ``budget`` of the time it has run."""
        now = time.perf_counter()
        return (now - self._last_draw >= self.min_interval
                and self._spent + self._cost <= self.budget * (now - self._run_started))

    def on_run_end(self, state: RunState) -> None:
        if self.image:
            self._draw(final=True)
        from tqdm.auto import tqdm

        tqdm.write(summary_line(self.runs[-1]))  # below any open progress bar, not through it

    def _draw(self, final: bool = False) -> None:
        """Render and show the chart; a failure to draw warns once and never stops the training."""
        started = time.perf_counter()
        try:
            if self._figure is None:
                self._figure = HistoryFigure()
            picture = png(self._figure.update(self.runs))
            self._show(picture, final)
        except Exception as error:  # noqa: BLE001 — the chart is a spectator; training goes on without it
            warnings.warn(f"the live chart stopped drawing ({type(error).__name__}: {error}); "
                          f"training continues. Set KDNB_PLOT=0 to turn it off.", RuntimeWarning, stacklevel=2)
            self.image = False
            return
        self.redraws += 1
        self._last_draw = time.perf_counter()
        self._cost = self._last_draw - started
        self._spent += self._cost

    def _show(self, picture: bytes, final: bool) -> None:
        from IPython.display import display, update_display

        text = "\n".join(summary_line(run) for run in self.runs) if final else f"live chart of {self.runs[-1].title}"
        bundle = {"image/png": base64.b64encode(picture).decode("ascii"), "text/plain": text}
        if self._display_id is None:
            self._display_id = uuid.uuid4().hex
            display(bundle, raw=True, display_id=self._display_id)
        else:
            update_display(bundle, raw=True, display_id=self._display_id)
