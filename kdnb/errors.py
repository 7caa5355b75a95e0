"""The ground floor: one error type for every bad input (so the notebook layer can turn it into a
one-line UsageError), the few words every check is made of, and warnings that point at the user's line.
Every layer imports this downwards."""
from __future__ import annotations

import difflib
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_PACKAGE_DIR = str(Path(__file__).resolve().parent)


class KdnbError(ValueError):
    """A problem with what the user passed: the message names it and says how to fix it."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else the list of valid names."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if close:
        return f"did you mean {close[0]!r}?"
    return "choose from " + ", ".join(repr(c) for c in choices)


def is_integer(value: Any) -> bool:
    """An ``int`` that is not a ``bool``: True is an int to Python, never a count of epochs to a user."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real ``int`` or ``float``, not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def first_line(error: BaseException) -> str:
    """The first line of an error's message (torch's run to many lines), or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first frame outside kdnb: the user's own line, however deep
    inside kdnb the warning was raised (a fixed ``stacklevel`` points into kdnb as soon as a call
    path changes)."""
    level, frame = 2, sys._getframe(1)  # stacklevel 2 is warn's caller
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level)
