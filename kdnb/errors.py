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
# torch's decorators (torch.no_grad() on a function) wrap kdnb's frames in theirs: not the user's line either
_DECORATOR_FILE = str(Path("torch", "utils", "_contextlib.py"))
# A magic runs inside IPython's machinery (its magic dispatch, decorator-made wrappers): the cell is the user's line.
_MACHINERY = ("IPython.", "ipykernel.")


class KdnbError(ValueError):
    """A problem with what the user passed: the message names it and says how to fix it."""


# The names users bring from the tools they know, and kdnb's for them (Torch-Pruning, torch.nn.utils.prune,
# HuggingFace's Trainer, Lightning, common distillation code); `suggest` offers kdnb's where the call takes it.
ALIASES = {
    "example_inputs": "example", "example_input": "example", "dummy_input": "example",
    "pruning_ratio": "sparsity", "ch_sparsity": "sparsity", "amount": "sparsity", "ratio": "sparsity",
    "target_sparsity": "sparsity", "max_pruning_ratio": "max_layer_sparsity",
    "importance": "criterion", "imp": "criterion", "pruning_method": "criterion", "global_pruning": "scope",
    "iterative_steps": "steps", "finetune_epochs": "finetune", "fine_tune": "finetune",
    "T": "temperature", "tau": "temperature", "temp": "temperature", "kd_ratio": "alpha", "kd_weight": "alpha",
    "kd_alpha": "alpha", "teacher_model": "teacher", "student_model": "student",
    "num_epochs": "epochs", "n_epochs": "epochs", "max_epochs": "epochs", "num_train_epochs": "epochs",
    "learning_rate": "lr", "random_seed": "seed",
    "train_loader": "data", "train_dataloader": "data", "dataloader": "data", "loader": "data",
    "val_loader": "val", "valid_loader": "val", "eval_loader": "val", "val_dataloader": "val",
    "eval_dataset": "val", "test_loader": "val",
    "gradient_clip_val": "grad_clip", "max_grad_norm": "grad_clip", "clip_grad_norm": "grad_clip",
    "fp16": "amp", "use_amp": "amp", "mixed_precision": "amp", "verbose": "progress",
}


def suggest(name: str, choices: Iterable[str]) -> str:
    """'did you mean 'x'?' for the name another tool gives ``x`` (`ALIASES`), a unique choice ``name`` begins
    (``temp`` -> 'temperature'), or a near spelling (``critrion`` -> 'criterion'); else the list of choices.
    The one did-you-mean of kdnb: the Python verbs, the checks of values and the magics use it."""
    choices = list(choices)
    alias = ALIASES.get(name)
    starts = [c for c in choices if c.startswith(name) and len(name) >= 3]
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    found = alias if alias in choices else starts[0] if len(starts) == 1 else close[0] if close else None
    if found is not None:
        return f"did you mean {found!r}?"
    return "choose from " + ", ".join(repr(c) for c in choices)


def check_keywords(verb: str, given: Iterable[str], accepted: Iterable[str]) -> None:
    """An unknown keyword argument to a public verb: one `KdnbError` naming it and the closest argument."""
    accepted = list(accepted)
    unknown = [name for name in given if name not in accepted]
    if unknown:
        raise KdnbError(f"{verb}() got an unknown keyword argument {unknown[0]!r}; {suggest(unknown[0], accepted)}")


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
    while frame is not None and _not_the_users(frame):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level)


def _not_the_users(frame: Any) -> bool:
    """A frame of kdnb, or of the IPython machinery between a magic cell and kdnb."""
    file = frame.f_code.co_filename
    return (file.startswith((_PACKAGE_DIR, "<decorator")) or file.endswith(_DECORATOR_FILE)
            or str(frame.f_globals.get("__name__", "")).startswith(_MACHINERY))
