"""Pruning's progress between training steps: the ``on_phase`` events of `kdnb.engine.events`.

A prune spends its time in phases, each in units a bar can count: "calibrate" (the calibration pass of the
statistics a criterion reads, layer by layer), "score" (the criterion's formula, layer by layer or group by
group), "rebuild" (the re-solve of the kept weights, layer by layer), "delete" (structured: the removed channels
deleted, group by group) and "time" (``scope="latency"``: the candidate cuts built and timed). Each phase
reports 0 at its start and ``total`` at its end, so nothing on screen stays still for longer than one unit.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from kdnb.engine.events import Dispatcher, RunState, report_phase

PHASES = ("calibrate", "score", "rebuild", "delete", "time")


class Phases:
    """Sends ``on_phase`` to ``subscribers`` (the run's callbacks: progress bar, live chart, user code)."""

    def __init__(self, model: nn.Module, subscribers: Iterable[object], title: str = "prune"):
        self.dispatcher = Dispatcher(subscribers)
        self.state = RunState(model=model, history=None, epochs=0, steps_per_epoch=0, title=title)

    def report(self, phase: str, done: int, total: int) -> None:
        """``phase`` has done ``done`` of its ``total`` units."""
        report_phase(self.dispatcher, self.state, phase, done, total)

    def tracker(self, phase: str) -> Callable[[int, int], None]:
        """``progress(done, total)`` for ``phase``, as the calibration passes and loops take it."""
        return lambda done, total: self.report(phase, done, total)

    def each(self, phase: str, items: list) -> Iterable:
        """``items`` one by one, reporting ``phase`` at the start and after each."""
        self.report(phase, 0, len(items))
        for done, item in enumerate(items):
            yield item
            self.report(phase, done + 1, len(items))


def silent() -> Phases:
    """Phases no one listens to."""
    return Phases(nn.Module(), ())
