"""The events a run emits. The progress bar, the live chart and user code subscribe to them.

A subscriber is any object with some of these methods; each receives the live `RunState`.
Subscribers may set `state.stop = True` to end the run after the current step.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

EVENTS = ("on_run_start", "on_step_end", "on_epoch_end", "on_run_end", "on_phase")


class Callback:
    """Base class for subscribers: override the events you care about."""

    def on_run_start(self, state: RunState) -> None: ...
    def on_step_end(self, state: RunState) -> None: ...
    def on_epoch_end(self, state: RunState) -> None: ...
    def on_run_end(self, state: RunState) -> None: ...
    def on_phase(self, state: RunState) -> None: ...  # a phase outside the steps moved on (see `RunState.phase`)


@dataclass
class RunState:
    """What a subscriber can see of a run in progress."""

    model: torch.nn.Module
    history: Any  # kdnb.engine.history.History
    epochs: int
    steps_per_epoch: int
    title: str = "train"
    epoch: int = 0  # 0-based index of the current epoch
    step: int = 0  # global step count, 1-based after the first step
    terms: dict[str, float] = field(default_factory=dict)  # loss terms of the last step
    stop: bool = False  # a subscriber sets this to end the run after the current step
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"sparsity": 0.5} from a schedule
    # The work between training steps (pruning's "calibrate", "score", "rebuild", "delete", "time"; "evaluate"),
    # reported by `on_phase` as it starts (done 0), advances and ends (done == total), in units such as layers.
    phase: str = ""
    phase_done: int = 0
    phase_total: int = 0


def report_phase(dispatcher: Dispatcher, state: RunState, phase: str, done: int, total: int) -> None:
    """Tells every subscriber that `phase` has done `done` of its `total` units (0 at its start, total at its end)."""
    state.phase, state.phase_done, state.phase_total = phase, done, total
    dispatcher.emit("on_phase", state)


class Dispatcher:
    """Calls each event on every subscriber that defines it, in order."""

    def __init__(self, subscribers: Iterable[object] = ()):
        self.subscribers = [s for s in subscribers if s is not None]

    def emit(self, event: str, state: RunState) -> None:
        for subscriber in self.subscribers:
            handler = getattr(subscriber, event, None)
            if handler is not None:
                handler(state)
