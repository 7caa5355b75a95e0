"""A tqdm.auto progress bar as a subscriber of the engine's events (a widget in notebooks, text elsewhere).

In a notebook the bar's output is shown under a display id and updated once more when the run ends,
so the text a saved notebook keeps beside the widget is the final line (``distill: 100%|...| 690/690``),
not the ``0%|`` the bar started with.
"""
from __future__ import annotations

import time

from kdnb.engine.distributed import is_main_process
from kdnb.engine.events import Callback, RunState


class ProgressBar(Callback):
    """One bar per run over all its steps; the loss in the postfix, refreshed at most ~4 times a second."""

    def __init__(self, min_interval: float = 0.25, leave: bool = True):
        self.min_interval = min_interval
        self.leave = leave
        self.bar = None
        self._display = None  # the notebook display of the bar's widget, updated with its last line at the end
        self._last = 0.0

    def on_run_start(self, state: RunState) -> None:
        from tqdm.auto import tqdm
        from tqdm.std import tqdm as text_tqdm

        if not is_main_process():
            return  # under torchrun one bar, rank 0's, not one per process
        total = state.epochs * state.steps_per_epoch or None
        options = dict(total=total, desc=state.title, unit="step", leave=self.leave, mininterval=self.min_interval)
        if tqdm.status_printer is not text_tqdm.status_printer:  # tqdm.auto chose the notebook widget
            from IPython.display import display

            self.bar = tqdm(**options, display=False)
            self._display = display(self.bar.container, display_id=True)
        else:
            self.bar = tqdm(**options)
        self._last = 0.0

    def on_step_end(self, state: RunState) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        now = time.perf_counter()
        if now - self._last >= self.min_interval:
            self._last = now
            self.bar.set_postfix(loss=f"{state.terms.get('loss', float('nan')):.4f}", refresh=False)

    def on_epoch_end(self, state: RunState) -> None:
        if self.bar is None:
            return
        val_acc = state.history.last("val_acc")
        postfix = {"epoch": f"{state.epoch + 1}/{state.epochs}", "loss": f"{state.history.last('train_loss'):.4f}"}
        if val_acc is not None:
            postfix["val_acc"] = f"{val_acc:.3f}"
        self.bar.set_postfix(postfix, refresh=False)

    def on_run_end(self, state: RunState) -> None:
        if self.bar is not None:
            self.bar.close()
            if self._display is not None and self.leave:
                self._display.update(self.bar.container)  # the saved notebook's text: the final line
            self.bar = self._display = None
