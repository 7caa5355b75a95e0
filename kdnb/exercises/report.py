"""What a check says: each test case, right or wrong, and a hint for what is wrong.

A check never answers just False: its `Report` prints one line per test case ("ok" or "wrong",
with a hint that names the likely mistake), and "not done yet" for an unfilled stub.
"""
from __future__ import annotations

import html
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import torch

NOT_DONE = object()  # what `attempt` returns when the student's function is still a stub
FAILED = object()    # ... and when it raised an error


class Report:
    """The outcome of one check. ``bool(report)`` (and ``report.passed``) is True when every case passes.

    An exercise has a fixed number of checks (``checks``): the ones a wrong answer stops short of are
    counted as not run yet, so the headline always counts the same checks ("1 of 3 checks pass").
    Shown as coloured HTML in a notebook, as text elsewhere; hints wrap between words.
    """

    def __init__(self, exercise: str, checks: int = 0):
        self.exercise = exercise
        self.checks = checks
        self.entries: list[tuple[str, str, str]] = []  # (status: "ok", "wrong", "stub"; what; hint)
        self.failures = 0
        self.passes = 0
        self.not_done = False

    def ok(self, what: str) -> None:
        self.passes += 1
        self.entries.append(("ok", what, ""))

    def wrong(self, what: str, hint: str) -> None:
        self.failures += 1
        self.entries.append(("wrong", what, hint))

    def stub(self, why: str) -> None:
        self.not_done = True
        self.entries.append(("stub", f"not done yet: {why}", ""))

    def add_hint(self, hint: str) -> None:
        """More advice on the last entry."""
        status, what, old = self.entries[-1]
        self.entries[-1] = (status, what, f"{old}; {hint}" if old else hint) if status == "wrong" else \
            (status, f"{what}; {hint}", old)

    @property
    def total(self) -> int:
        return max(self.checks, self.passes + self.failures)

    @property
    def not_run(self) -> int:
        return self.total - self.passes - self.failures

    @property
    def passed(self) -> bool:
        return not self.not_done and self.failures == 0 and self.passes > 0 and self.not_run == 0

    def __bool__(self) -> bool:
        return self.passed

    def headline(self) -> str:
        if self.not_done:
            return f"{self.exercise}: not done yet"
        total = self.total
        if self.passed:
            return f"{self.exercise}: all {total} checks pass. Well done!" if total > 1 else f"{self.exercise}: the check passes. Well done!"
        return f"{self.exercise}: {self.passes} of {total} check{'s' if total > 1 else ''} pass"

    def _pending(self) -> str:
        count = self.not_run
        return f"{count} more check{'s' if count > 1 else ''} once the ones above pass" if count and not self.not_done else ""

    def __repr__(self) -> str:
        lines = [self.headline()]
        for status, what, hint in self.entries:
            mark = f"  {TEXT_MARKS[status]:7s}" if status in TEXT_MARKS else "  "
            lines.append(textwrap.fill(what, WIDTH, initial_indent=mark, subsequent_indent=" " * len(mark)))
            if hint:
                lines.append(textwrap.fill(hint, WIDTH, initial_indent=" " * 9 + "hint: ", subsequent_indent=" " * 15))
        if self._pending():
            lines.append(f"  ...    {self._pending()}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        color = "#2e7d32" if self.passed else "#9e6a00" if self.not_done else "#c62828"
        rows = []
        for status, what, hint in self.entries:
            mark, mark_color = HTML_MARKS[status]
            advice = f"<div style='margin-left:1.6em;color:#444'>hint: {html.escape(hint)}</div>" if hint else ""
            rows.append(f"<li style='list-style:none'><span style='color:{mark_color};font-weight:bold'>{mark}"
                        f"</span> {html.escape(what)}{advice}</li>")
        if self._pending():
            rows.append(f"<li style='list-style:none;color:#777'>&hellip; {html.escape(self._pending())}</li>")
        return (f"<div class='kdnb-check'><div style='color:{color};font-weight:bold'>{html.escape(self.headline())}"
                f"</div><ul style='margin:0.2em 0;padding-left:0.4em'>{''.join(rows)}</ul></div>")


WIDTH = 100  # characters per line of the text report
TEXT_MARKS = {"ok": "ok", "wrong": "wrong"}  # a stub's line ("not done yet: ...") speaks for itself
HTML_MARKS = {"ok": ("&#10003;", "#2e7d32"), "wrong": ("&#10007;", "#c62828"), "stub": ("&#8230;", "#9e6a00")}


def attempt(report: Report, fn: Callable[..., Any], *args: Any, none_is_stub: bool = True) -> Any:
    """``fn(*args)``, or `NOT_DONE` for a stub (NotImplementedError, ``...``, or None) and `FAILED`
    when it raised; either way the report says so."""
    if not callable(fn):
        report.wrong("the argument is a function", f"pass the function itself, e.g. check.x(my_fn), not {type(fn).__name__}")
        return FAILED
    try:
        value = fn(*args)
    except NotImplementedError:
        report.stub(f"{getattr(fn, '__name__', 'the function')} still raises NotImplementedError: "
                    "replace that line with your code")
        return NOT_DONE
    except Exception as error:  # the student's bug: say what it was, on which input
        report.wrong(f"calling {getattr(fn, '__name__', 'your function')}({describe(*args)})",
                     f"it raised {type(error).__name__}: {error}")
        return FAILED
    if value is Ellipsis or (value is None and none_is_stub):
        report.stub(f"{getattr(fn, '__name__', 'the function')} returns {value!r}: write the body and return the result")
        return NOT_DONE
    return value


def describe(*args: Any) -> str:
    """Short description of arguments: tensors by shape, the rest by value."""
    parts = []
    for arg in args:
        if isinstance(arg, torch.Tensor):
            parts.append(f"tensor{tuple(arg.shape)}")
        elif isinstance(arg, torch.nn.Module):
            parts.append(type(arg).__name__)
        else:
            parts.append(repr(arg))
    return ", ".join(parts)


def as_tensor(report: Report, value: Any, what: str, shape: tuple[int, ...] | torch.Size) -> torch.Tensor | None:
    """``value`` as a float tensor of ``shape``, or None after reporting why it is not one."""
    if not isinstance(value, torch.Tensor):
        report.wrong(what, f"return a torch.Tensor, got {type(value).__name__}")
        return None
    if tuple(value.shape) != tuple(shape):
        report.wrong(what, f"expected shape {tuple(shape)}, got {tuple(value.shape)}")
        return None
    return value.detach().double()


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol)


def as_number(value: Any) -> float | None:
    """A Python float from a number or a one-element tensor, else None."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def grade_fraction(report: Report, what: str, value: Any, expected: float, formula: str,
                   mistakes: Sequence[tuple[float, str]] = ()) -> None:
    """Grade a student's fraction: right; a percentage instead; one of the known ``mistakes``
    (the value that mistake gives, and its hint); or wrong, with the ``formula`` to compare against."""
    mine = as_number(value)
    if mine is None:
        report.wrong(what, f"return a number, got {type(value).__name__}")
    elif abs(mine - expected) < 1e-9:
        report.ok(f"{what} = {expected:g}")
    elif abs(mine - 100 * expected) < 1e-6:
        report.wrong(what, f"return a fraction ({expected:g}), not a percentage ({mine:g})")
    else:
        hint = next((hint for wrong, hint in mistakes if abs(mine - wrong) < 1e-9), None)
        report.wrong(what, hint or f"got {mine:g}, expected {expected:g} = {formula}")
