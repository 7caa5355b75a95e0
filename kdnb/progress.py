"""A tqdm.auto progress bar as a subscriber of the engine's events (a widget in notebooks, text elsewhere)."""
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
        self._last = 0.0

    def on_run_start(self, state: RunState) -> None:
        from tqdm.auto import tqdm

        if not is_main_process():
            return  # under torchrun one bar, rank 0's, not one per process
        total = state.epochs * state.steps_per_epoch or None
        self.bar = tqdm(total=total, desc=state.title, unit="step", leave=self.leave, mininterval=self.min_interval)
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
            self.bar = None
