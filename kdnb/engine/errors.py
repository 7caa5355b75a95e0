"""One error type for every bad input, so the notebook layer can turn it into a one-line UsageError."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class KdnbError(ValueError):
    """A problem with what the user passed: the message names it and says how to fix it."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else the list of valid names."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if close:
        return f"did you mean {close[0]!r}?"
    return "choose from " + ", ".join(repr(c) for c in choices)
