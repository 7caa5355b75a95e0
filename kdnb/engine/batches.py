"""Batches and model outputs as people have them: the one place in kdnb that knows their shapes.

A batch is a tensor (inputs, no labels), ``(inputs, labels)``, ``(x1, ..., xn, labels)``, or a mapping
(HuggingFace style: the model's keyword inputs plus ``"labels"``). `split_batch` turns each into
``(args, kwargs, labels)``; `call_model` calls ``model(*args, **kwargs)``. A model may return a tensor, a
tuple, a mapping or a `transformers` ``ModelOutput``: `logits_of` takes the logits (the tensor; ``.logits``;
the ``"logits"`` key; the first tensor) and says which it took, once per kind of output in a session.

Anything else is one pair of callables, the verbs' ``inputs=`` and ``logits=`` arguments, set for one call
with `reading`: ``inputs(batch) -> (args, kwargs, labels)`` and ``logits(output) -> tensor``.

Sequence outputs, logits ``(batch, tokens, classes)`` (token classification, masked and causal language
models), are compared per token over the positions that count (`Positions`): labels of -100 and padding
(``attention_mask == 0``) are left out, and a causal LM's logits at position t are scored against the
token at t + 1, as HuggingFace's own loss does.

Cost: a tensor or ``(x, y)`` batch and a tensor output take a few isinstance checks per batch
(``bench/loop_overhead.py``).
"""
from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch

from kdnb.errors import KdnbError, first_line, warn

Args = tuple
Kwargs = dict
Split = tuple[Args, Kwargs, Any]

LABEL_KEYS = ("labels", "label", "label_ids")  # what HuggingFace's data collators rename to "labels"
IGNORE_INDEX = -100  # the label of a position that does not count (HuggingFace's and torch's cross-entropy)


@dataclass(frozen=True)
class Reading:
    """How one verb call reads batches and outputs: the user's ``inputs=`` and ``logits=`` callables (None:
    kdnb's defaults)."""

    inputs: Callable[[Any], Split] | None = None
    logits: Callable[[Any], torch.Tensor] | None = None


_READING: ContextVar[Reading] = ContextVar("kdnb_reading", default=Reading())
_SAID: set[tuple[str, str]] = set()  # (output type, part taken): each said once in a session


@contextlib.contextmanager
def reading(inputs: Callable[[Any], Split] | None = None,
            logits: Callable[[Any], torch.Tensor] | None = None) -> Iterator[Reading]:
    """Inside, `split_batch` and `logits_of` use ``inputs`` / ``logits`` when given (a verb's entry sets them
    for its whole call). A nested verb call keeps the outer call's callables unless it passes its own."""
    outer = _READING.get()
    inner = Reading(inputs if inputs is not None else outer.inputs, logits if logits is not None else outer.logits)
    token = _READING.set(inner)
    try:
        yield inner
    finally:
        _READING.reset(token)


def check_readers(inputs: Any, logits: Any) -> None:
    """``inputs=`` and ``logits=``: None or callables (checked at a verb's entry)."""
    for name, value, example in (("inputs", inputs, "inputs=lambda b: ((b['image'],), {}, b['target'])"),
                                 ("logits", logits, "logits=lambda out: out['scores']")):
        if value is not None and not callable(value):
            raise KdnbError(f"{name} should be None or a function, got {type(value).__name__}; pass e.g. {example}")


def split_batch(batch: Any) -> Split:
    """``(args, kwargs, labels or None)`` of one batch: a tensor -> ``((x,), {}, None)``; ``(x, y)`` ->
    ``((x,), {}, y)``; ``(x1, ..., xn, y)`` -> ``((x1, ..., xn), {}, y)``; a mapping -> ``((), its other keys,
    its "labels")``. A batch of another form is a TypeError (the checks turn it into one line)."""
    custom = _READING.get().inputs
    if custom is not None:
        return _split_custom(custom, batch)
    if isinstance(batch, torch.Tensor):
        return (batch,), {}, None
    if isinstance(batch, (list, tuple)) and batch:
        return (tuple(batch[:-1]) if len(batch) > 1 else (batch[0],)), {}, (batch[-1] if len(batch) > 1 else None)
    if isinstance(batch, Mapping) and batch:
        kwargs = dict(batch)
        labels = next((kwargs.pop(key) for key in LABEL_KEYS if key in kwargs), None)
        return (), kwargs, labels
    raise TypeError(f"a batch should be a tensor, (inputs, labels) or a mapping, got {type(batch).__name__}")


def _split_custom(custom: Callable[[Any], Split], batch: Any) -> Split:
    try:
        split = custom(batch)
    except (KdnbError, KeyboardInterrupt):
        raise
    except Exception as error:  # noqa: BLE001 - the user's reader failed: one line naming it
        raise KdnbError(f"inputs= failed on a batch of type {type(batch).__name__}: {type(error).__name__}: "
                        f"{first_line(error)}; it should return (args tuple, kwargs dict, labels or None)") from None
    if not (isinstance(split, tuple) and len(split) == 3 and isinstance(split[0], tuple)
            and isinstance(split[1], Mapping)):
        raise KdnbError(f"inputs= should return (args tuple, kwargs dict, labels or None), got "
                        f"{type(split).__name__}; pass e.g. inputs=lambda b: ((b['image'],), {{}}, b['target'])")
    return split[0], dict(split[1]), split[2]


def example_inputs(example: Any) -> tuple[Args, Kwargs]:
    """An ``example=`` as ``(args, kwargs)``: a tensor is one positional input, a tuple several, a mapping the
    keyword inputs (its labels, if any, dropped). Inputs only: a tuple's last item is not read as labels."""
    if isinstance(example, torch.Tensor):
        return (example,), {}
    if isinstance(example, (list, tuple)):
        return tuple(example), {}
    if isinstance(example, Mapping):
        return (), {key: value for key, value in example.items() if key not in LABEL_KEYS}
    raise TypeError(f"an example should be a tensor, a tuple of tensors or a mapping, got {type(example).__name__}")


def as_example(args: Args, kwargs: Kwargs) -> Any:
    """``(args, kwargs)`` back as an example `example_inputs` reads: the mapping of keyword inputs, else the
    positional input (one tensor) or inputs (a tuple). Keyword inputs win when a batch has both."""
    if kwargs:
        return kwargs
    return args[0] if len(args) == 1 else args


def call_example(model: Callable[..., Any], example: Any) -> Any:
    """The model called on an example (a tensor, a tuple of inputs or a mapping of keyword inputs)."""
    return call_model(model, *example_inputs(example))


def example_rows(example: Any) -> int:
    """Rows (samples) of an example."""
    return batch_size(*example_inputs(example))


def first_example_rows(example: Any, rows: int) -> Any:
    """The first ``rows`` samples of an example, in the example's own form."""
    if isinstance(example, torch.Tensor):
        return example[:rows]
    args, kwargs = first_rows(*example_inputs(example), rows)
    return kwargs if isinstance(example, Mapping) else args


def join_examples(examples: Sequence[Any]) -> Any:
    """Examples of one form (tensors, tuples of inputs, or mappings with the same keys) joined row-wise into one,
    or None where they cannot be (another form, a non-tensor input, shapes that differ after the batch)."""
    first = examples[0]
    if isinstance(first, torch.Tensor):
        parts = [[example] for example in examples]
    elif isinstance(first, Mapping):
        parts = [[example[key] for key in first] if isinstance(example, Mapping) and example.keys() == first.keys()
                 else None for example in examples]
    elif isinstance(first, tuple):
        parts = [list(example) if isinstance(example, tuple) and len(example) == len(first) else None
                 for example in examples]
    else:
        return None
    if any(part is None for part in parts) or not all(
            isinstance(value, torch.Tensor) and value.dim() and value.shape[1:] == reference.shape[1:]
            for part in parts for value, reference in zip(part, parts[0])):
        return None
    joined = [torch.cat(column) for column in zip(*parts)]
    if isinstance(first, torch.Tensor):
        return joined[0]
    return dict(zip(first, joined)) if isinstance(first, Mapping) else tuple(joined)


def example_of(batch: Any) -> Any:
    """A batch's inputs as an example (`as_example`): what structured pruning traces when given data."""
    return as_example(*inputs_of(batch))


def inputs_of(batch: Any) -> tuple[Args, Kwargs]:
    """The ``(args, kwargs)`` of a batch, its labels dropped."""
    args, kwargs, _ = split_batch(batch)
    return args, kwargs


def call_model(model: Callable[..., Any], args: Args, kwargs: Kwargs) -> Any:
    """``model(*args, **kwargs)``: a model called on one batch's inputs."""
    return model(*args, **kwargs) if kwargs else model(*args)


def tensors(args: Args, kwargs: Kwargs) -> list[torch.Tensor]:
    """The input tensors, positional ones first."""
    return [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]


def batch_size(args: Args, kwargs: Kwargs) -> int:
    """Rows of the batch: the first dimension of its first input tensor (0 when it has none)."""
    if args and isinstance(args[0], torch.Tensor) and args[0].dim():  # the usual batch, without a list
        return args[0].shape[0]
    first = next((t for t in tensors(args, kwargs) if t.dim() > 0), None)
    return 0 if first is None else first.shape[0]


def first_rows(args: Args, kwargs: Kwargs, rows: int) -> tuple[Args, Kwargs]:
    """The first ``rows`` rows of every input tensor (anything else as it is)."""
    return row_slice(args, kwargs, 0, rows)


def row_slice(args: Args, kwargs: Kwargs, start: int, stop: int) -> tuple[Args, Kwargs]:
    """Rows ``start:stop`` of every input tensor (anything else as it is)."""
    def cut(value: Any) -> Any:
        return value[start:stop] if isinstance(value, torch.Tensor) and value.dim() > 0 else value

    return tuple(cut(a) for a in args), {key: cut(value) for key, value in kwargs.items()}


def describe(args: Args, kwargs: Kwargs) -> str:
    """The inputs' shapes for a message: "(64, 8)" or "input_ids (4, 16), attention_mask (4, 16)"."""
    def shape(value: Any) -> str:
        return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__

    parts = [shape(a) for a in args] + [f"{key} {shape(value)}" for key, value in kwargs.items()]
    return ", ".join(parts) if parts else "no inputs"


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's output: the tensor itself; ``.logits`` (a ``ModelOutput``); the ``"logits"``
    key of a mapping; else the first tensor of a tuple or mapping. Which it took is said once per kind of output
    in a session. The verbs' ``logits=`` callable, when given, decides instead. An output with no logits is a
    one-line KdnbError naming ``logits=``."""
    reading = _READING.get()
    if reading.logits is not None:
        return _custom_logits(reading.logits, output)
    if isinstance(output, torch.Tensor):
        return output
    found, how = _find_logits(output)
    if found is None:
        raise KdnbError(f"the model returns a {type(output).__name__}{_keys(output)} with no logits kdnb can find; "
                        "pass logits=lambda output: ... (the function that picks the logits tensor from it)")
    notice = (type(output).__name__, how)
    if notice not in _SAID:
        _SAID.add(notice)
        warn(f"the model returns a {type(output).__name__}; kdnb uses {how} as the logits "
             "(pass logits=lambda output: ... to pick another part)", LogitsNotice)
    return found


class LogitsNotice(UserWarning):
    """Which part of a model's output kdnb took as its logits (said once per kind of output in a session)."""


def _find_logits(output: Any) -> tuple[torch.Tensor | None, str]:
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits, "its .logits"
    if isinstance(output, Mapping):
        if isinstance(output.get("logits"), torch.Tensor):
            return output["logits"], "its 'logits' key"
        key = next((key for key, value in output.items() if isinstance(value, torch.Tensor)), None)
        return (output[key], f"its first tensor (key {key!r})") if key is not None else (None, "")
    if isinstance(output, (tuple, list)):
        index = next((i for i, value in enumerate(output) if isinstance(value, torch.Tensor)), None)
        return (output[index], f"its first tensor (item {index})") if index is not None else (None, "")
    return None, ""


def _keys(output: Any) -> str:
    if isinstance(output, Mapping):
        return f" with keys {sorted(map(str, output))[:6]}"
    return f" of {len(output)} items" if isinstance(output, (tuple, list)) else ""


def _custom_logits(custom: Callable[[Any], torch.Tensor], output: Any) -> torch.Tensor:
    try:
        logits = custom(output)
    except (KdnbError, KeyboardInterrupt):
        raise
    except Exception as error:  # noqa: BLE001 - the user's picker failed: one line naming it
        raise KdnbError(f"logits= failed on the model's {type(output).__name__}: {type(error).__name__}: "
                        f"{first_line(error)}; it should return the logits tensor of the model's output") from None
    if not isinstance(logits, torch.Tensor):
        raise KdnbError(f"logits= should return a tensor, got {type(logits).__name__}; pass e.g. "
                        "logits=lambda output: output[0]")
    return logits


def is_causal_lm(model: torch.nn.Module) -> bool:
    """A causal language model of `transformers` (its logits at t predict token t + 1): its class is one the
    library's AutoModelForCausalLM builds. False for any other model, and when transformers is not loaded."""
    model = getattr(model, "module", model)  # DistributedDataParallel's
    return "transformers" in sys.modules and _causal_class(type(model).__name__)


@functools.lru_cache(maxsize=None)
def _causal_class(name: str) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return name in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


@dataclass(frozen=True)
class Positions:
    """The positions of a sequence batch that count, to compare logits ``(batch, tokens, classes)`` as rows
    ``(positions, classes)``: causal (``shift``) drops the last position (there is no next token to predict)
    and the labels' first; ``mask`` (batch, tokens after the shift) keeps labels != -100 and attention_mask
    != 0. A teacher's and a student's logits taken by the same `Positions` line up row by row."""

    shift: bool
    mask: torch.Tensor | None

    def logits(self, logits: torch.Tensor) -> torch.Tensor:
        if self.shift:
            logits = logits[:, :-1]
        return logits[self.mask] if self.mask is not None else logits.reshape(-1, logits.shape[-1])

    def labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        if labels is None:
            return None
        if self.shift:
            labels = labels[:, 1:]
        return labels[self.mask] if self.mask is not None else labels.reshape(-1)


def positions(model: torch.nn.Module, logits: torch.Tensor, labels: Any, kwargs: Kwargs) -> Positions | None:
    """The `Positions` of a sequence output (logits with 3 or more dimensions), None for logits
    ``(batch, classes)``. Labels of the logits' own (batch, tokens) shape mark positions with -100."""
    if logits.dim() < 3:
        return None
    shift = is_causal_lm(model)
    mask = None
    if isinstance(labels, torch.Tensor) and labels.shape == logits.shape[:-1]:
        mask = labels != IGNORE_INDEX
    attention = kwargs.get("attention_mask")
    if isinstance(attention, torch.Tensor) and attention.shape == logits.shape[:2]:
        attention = attention.bool()
        mask = attention if mask is None else mask & attention
    if mask is not None and shift:
        mask = mask[:, 1:]
    return Positions(shift=shift, mask=mask)


def ignoring_rows(model: torch.nn.Module, logits: torch.Tensor, labels: torch.Tensor,
                  kwargs: Kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` without selecting: every position a row, the ones that do not count labelled -100 (which
    cross-entropy ignores). No data-dependent shape, so it runs under ``torch.func.vmap``."""
    if logits.dim() < 3:
        return logits, labels
    attention = kwargs.get("attention_mask")
    if isinstance(attention, torch.Tensor) and attention.shape == labels.shape:
        labels = torch.where(attention.bool(), labels, torch.full_like(labels, IGNORE_INDEX))
    if is_causal_lm(model):
        logits, labels = logits[:, :-1], labels[:, 1:]
    return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)


def rows(model: torch.nn.Module, logits: torch.Tensor, labels: Any,
         kwargs: Kwargs) -> tuple[torch.Tensor, Any, Positions | None]:
    """``(logits as rows (N, classes), labels as rows (N,) or as given, positions)``: a sequence output's
    positions that count (`positions`); logits ``(batch, classes)`` as they are."""
    where = positions(model, logits, labels, kwargs)
    if where is None:
        return logits, labels, None
    return where.logits(logits), where.labels(labels if isinstance(labels, torch.Tensor) else None), where
