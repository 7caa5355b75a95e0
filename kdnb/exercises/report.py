"""What a check says: each test case, right or wrong, and a hint for what is wrong.

A check never answers just False: its `Report` prints one line per test case ("ok" or "wrong",
with a hint that names the likely mistake), and "not done yet" for an unfilled stub.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

NOT_DONE = object()  # what `attempt` returns when the student's function is still a stub
FAILED = object()    # ... and when it raised an error


class Report:
    """The outcome of one check. ``bool(report)`` (and ``report.passed``) is True when every case passes."""

    def __init__(self, exercise: str):
        self.exercise = exercise
        self.lines: list[str] = []
        self.failures = 0
        self.passes = 0
        self.not_done = False

    def ok(self, what: str) -> None:
        self.passes += 1
        self.lines.append(f"  ok     {what}")

    def wrong(self, what: str, hint: str) -> None:
        self.failures += 1
        self.lines.append(f"  wrong  {what}\n         hint: {hint}")

    def stub(self, why: str) -> None:
        self.not_done = True
        self.lines.append(f"  not done yet: {why}")

    @property
    def passed(self) -> bool:
        return not self.not_done and self.failures == 0 and self.passes > 0

    def __bool__(self) -> bool:
        return self.passed

    def headline(self) -> str:
        if self.not_done:
            return f"{self.exercise}: not done yet"
        total = self.passes + self.failures
        if self.passed:
            return f"{self.exercise}: all {total} checks pass. Well done!" if total > 1 else f"{self.exercise}: the check passes. Well done!"
        return f"{self.exercise}: {self.passes} of {total} check{'s' if total > 1 else ''} pass"

    def __repr__(self) -> str:
        return "\n".join([self.headline(), *self.lines])


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
