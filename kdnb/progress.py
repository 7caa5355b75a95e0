"""A tqdm.auto progress bar as a subscriber of the engine's events (a widget in notebooks, text elsewhere).

One bar per training run, and one for pruning's phases between the runs ("rebuild: layer 7 of 52", from
`on_phase`). In a notebook each bar is shown under a display id and, when its run or phase ends, replaced
there by a static line (HTML and plain text: the final count, time and loss, no widget). So the notebook,
saved and reopened anywhere without its kernel (JupyterLab, Notebook 7, VS Code, nbconvert's HTML),
shows that line, never "Error displaying widget", and never a half-drawn text bar.
"""
from __future__ import annotations

import html
import time
from typing import Any

from kdnb.engine.distributed import is_main_process
from kdnb.engine.events import Callback, RunState

# The unit each of pruning's phases counts in (`kdnb.engine.prune.phases`); a phase whose unit varies (calibrate,
# score: layers or groups) counts plainly.
PHASE_UNITS = {"rebuild": "layer", "delete": "group", "time": "cut"}
STATUS_COLORS = {"completed": "#4caf50", "interrupted": "#ff9800", "stopped": "#ff9800"}  # else red
STATIC_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit}s [{elapsed}, {rate_fmt}{postfix}]"
PHASE_FORMAT = "{desc} {n_fmt} of {total_fmt} {bar} [{elapsed}]"


def phase_text(state: RunState) -> str:
    """``rebuild: layer 7 of 52`` (``delete: 3 of 9`` for a phase without a known unit)."""
    unit = PHASE_UNITS.get(state.phase)
    return f"{state.phase}: {unit + ' ' if unit else ''}{state.phase_done} of {state.phase_total}"


def static_bundle(text: str, fraction: float, color: str) -> dict[str, str]:
    """A finished bar as plain output: a drawn bar and its line in HTML, the line alone as text."""
    width = max(0.0, min(fraction, 1.0)) * 100
    bar = (f"<span style='display:inline-block;width:160px;height:9px;background:#e4e4e4;border-radius:2px'>"
           f"<span style='display:block;width:{width:.1f}%;height:9px;background:{color};border-radius:2px'>"
           f"</span></span>")
    return {"text/plain": text,
            "text/html": f"<div class='kdnb-progress' style='font-family:monospace;font-size:12px'>{bar} "
                         f"{html.escape(text)}</div>"}


class _Shown:
    """One tqdm bar; in a notebook its widget under a display id, which `finish` replaces by a static line."""

    def __init__(self, display: Any = None, **options: Any):
        from tqdm.auto import tqdm
        from tqdm.std import tqdm as text_tqdm

        self.display = display
        if tqdm.status_printer is not text_tqdm.status_printer:  # tqdm.auto chose the notebook widget
            from IPython.display import display as show

            self.bar = tqdm(**options, display=False)
            if self.display is None:
                self.display = show(self.bar.container, display_id=True)
            else:
                self.display.update(self.bar.container)
        else:
            self.bar = tqdm(**options)

    def finish(self, text: str, fraction: float, color: str) -> None:
        self.bar.close()
        if self.display is not None:
            self.display.update(static_bundle(text, fraction, color), raw=True)
            self.bar.container.close()  # the widget's model goes too: nothing is left to save but the line

    def line(self, bar_format: str) -> str:
        """The bar's line without the drawn bar (which, as text, would be cut or wrapped)."""
        meter = {**self.bar.format_dict, "bar_format": bar_format}
        return self.bar.format_meter(**meter)


class ProgressBar(Callback):
    """One bar per run over all its steps; the loss in the postfix, refreshed at most ~4 times a second;
    one bar for the phases between the runs, each phase in turn."""

    def __init__(self, min_interval: float = 0.25, leave: bool = True):
        self.min_interval = min_interval
        self.leave = leave
        self.bar: Any = None  # the tqdm bar of the run in progress
        self._shown: _Shown | None = None
        self._phase: _Shown | None = None  # the bar of the phase in progress
        self._phase_display: Any = None  # the phases' one output, reused by each phase in turn
        self._phases_done: list[str] = []
        self._last = 0.0

    def on_run_start(self, state: RunState) -> None:
        if not is_main_process():
            return  # under torchrun one bar, rank 0's, not one per process
        total = state.epochs * state.steps_per_epoch or None
        self._shown = _Shown(total=total, desc=state.title, unit="step", leave=self.leave,
                             mininterval=self.min_interval)
        self.bar = self._shown.bar
        self._last = 0.0

    def on_phase(self, state: RunState) -> None:
        if not is_main_process():
            return
        if self._phase is not None and self._phase.bar.desc.split(":")[0] != state.phase:
            self._end_phase()
        if self._phase is None:
            unit = PHASE_UNITS.get(state.phase)
            self._phase = _Shown(self._phase_display, total=state.phase_total or None,
                                 desc=f"{state.phase}:{' ' + unit if unit else ''}", leave=self.leave,
                                 mininterval=self.min_interval, bar_format=PHASE_FORMAT)
            self._phase_display = self._phase.display
        self._phase.bar.update(state.phase_done - self._phase.bar.n)
        if state.phase_total and state.phase_done >= state.phase_total:
            self._end_phase()

    def _end_phase(self) -> None:
        shown, self._phase = self._phase, None
        bar = shown.bar
        self._phases_done.append(f"{bar.desc} {bar.n} of {bar.total}" if bar.total else f"{bar.desc} {bar.n}")
        elapsed = bar.format_interval(bar.format_dict["elapsed"])
        shown.finish(f"{', '.join(self._phases_done)} [{elapsed}]", 1.0, STATUS_COLORS["completed"])

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
        if self._phase is not None:
            self._end_phase()
        if self._shown is None:
            return
        shown, self._shown, self.bar = self._shown, None, None
        status = state.history.status
        text = shown.line(STATIC_FORMAT)
        text = text if status == "completed" else f"{text} ({status})"
        total = shown.bar.total or max(shown.bar.n, 1)
        if self.leave:
            shown.finish(text, shown.bar.n / total, STATUS_COLORS.get(status, "#e53935"))
        else:
            shown.bar.close()
