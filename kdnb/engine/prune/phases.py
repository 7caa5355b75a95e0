"""Pruning's progress between training steps: the ``on_phase`` events of `kdnb.engine.events`.

A prune spends its time in phases, each in units a bar can count: "calibrate" (the calibration pass of the
statistics a criterion reads, layer by layer), "score" (the criterion's formula, layer by layer or group by
group), "rebuild" (the re-solve of the kept weights, layer by layer), "delete" (structured: the removed channels
deleted, group by group) and "time" (``scope="latency"``: the candidate cuts built and timed). Each phase
reports 0 at its start and ``total`` at its end, so nothing on screen stays still for longer than one unit.
"""
from __future__ import annotations

import sys
import time
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


def cost(started: float, model: nn.Module, with_data: bool) -> dict[str, float]:
    """What a prune cost: seconds since ``started`` (``time.perf_counter``), the process's peak resident memory
    (bytes; where the platform reports it) and, with data, the largest layer's statistics, the most the layer-wise
    methods hold at once (a ``(d+1)^2`` Gram matrix and ``(d+1) x out`` cross products, fp64)."""
    found = {"seconds": time.perf_counter() - started}
    try:
        import resource

        found["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin"
                                                                                       else 1024)
    except ImportError:  # Windows
        pass
    if with_data:
        widths = [(m.weight[0].numel() + 1, m.weight.shape[0]) for m in model.modules()
                  if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
        found["statistics_bytes"] = max((8 * d * (d + out) for d, out in widths), default=0)
    return found


def cost_line(found: dict[str, float]) -> str:
    """`cost` as one line of a summary."""
    parts = [f"pruned in {found['seconds']:.1f} s"]
    if "peak_rss_bytes" in found:
        parts.append(f"peak memory {found['peak_rss_bytes'] / 2**30:.2f} GB (the process's)")
    if "statistics_bytes" in found:
        parts.append(f"at most {found['statistics_bytes'] / 2**20:.2g} MB of layer statistics at once")
    return ", ".join(parts)
