"""The public verbs. Each is a plain-PyTorch engine function; here it also gets the subscribers
a person at a notebook wants: a progress bar and (``plot="auto"``) the live loss chart.

Magics and Python calls go through these same functions, so both show the same.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from kdnb.engine import batches, checks
from kdnb.engine import distributed as ranks
from kdnb.env import plotting_enabled
from kdnb.errors import KdnbError, check_keywords

F = TypeVar("F", bound=Callable[..., Any])


def subscribers(progress: bool = True, plot: bool | str = "auto", callbacks: Iterable[object] = ()) -> list[object]:
    """The subscribers for one verb call: progress bar, live chart (in a notebook), then the user's."""
    subs: list[object] = []
    if plot and plotting_enabled() and ranks.is_main_process():
        from kdnb.widgets import live_chart_for  # lazy: matplotlib and ipywidgets load only when needed

        chart = live_chart_for(plot)
        if chart is not None:
            subs.append(chart)
    if progress:
        from kdnb.progress import ProgressBar

        subs.append(ProgressBar())
    subs.extend(callbacks or ())
    return subs


def check_subscribers(progress: Any, plot: Any) -> None:
    """``progress=`` and ``plot=``, checked before anything runs (the chart may not even be drawn here)."""
    checks.check_bool("progress", progress)
    if not any(plot is choice for choice in (True, False)) and plot != "auto":
        raise KdnbError(f"plot should be True, False or 'auto', got {checks.shown(plot)}; pass plot='auto' "
                        "(a live chart in a notebook), True or False")


READERS_HELP = """        inputs: how to read a batch the default reading does not know: ``inputs(batch) -> (args tuple,
            kwargs dict, labels or None)``, the model then called as ``model(*args, **kwargs)``. By default a
            batch is a tensor, ``(inputs, labels)``, ``(x1, ..., xn, labels)`` or a mapping (HuggingFace
            style: the model's keyword inputs plus "labels").
        logits: how to take the logits from the model's output: ``logits(output) -> tensor``. By default the
            output itself (a tensor), its ``.logits`` (a ModelOutput), its "logits" key, else its first tensor
            (kdnb says once which it took)."""


def reads_batches(verb: F) -> F:
    """Wrap a verb so it also takes ``inputs=`` and ``logits=`` (`READERS_HELP`): checked at its entry, then in
    force for the whole call (`kdnb.engine.batches.reading`)."""

    @functools.wraps(verb)
    def reading_verb(*args: Any, inputs: Callable | None = None, logits: Callable | None = None, **kwargs: Any) -> Any:
        batches.check_readers(inputs, logits)
        with batches.reading(inputs, logits):
            return verb(*args, **kwargs)

    signature = inspect.signature(verb)
    params = list(signature.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation="Callable | None")
             for name in ("inputs", "logits")]
    reading_verb.__signature__ = signature.replace(parameters=params[:at] + extra + params[at:])  # type: ignore
    if verb.__doc__ and "inputs:" not in verb.__doc__:
        reading_verb.__doc__ = verb.__doc__.rstrip() + "\n\n    Batches and outputs of other shapes:\n" + READERS_HELP
    return reading_verb  # type: ignore[return-value]
def keyword_names(fn: Callable[..., Any]) -> list[str]:
    """The arguments ``fn`` takes by keyword."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds]


def keywords_checked(fn: F) -> F:
    """``fn`` whose unknown keyword argument is one `KdnbError` naming it and the closest argument (the name
    another tool gives it, too: ``example_inputs`` -> 'example'), not a raw TypeError."""
    accepted = keyword_names(fn)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()):
        return fn  # it takes any keyword: it names its own unknown ones

    @functools.wraps(fn)
    def verb(*args: Any, **kwargs: Any) -> Any:
        check_keywords(fn.__name__, kwargs, accepted)
        return fn(*args, **kwargs)

    return verb  # type: ignore[return-value]


def with_subscribers(engine_fn: F) -> F:
    """Wrap an engine verb (which takes ``callbacks=``) so it also takes ``progress=``, ``plot=`` and
    ``distributed=`` (how every training run of the call is spread over processes, `kdnb.engine.distributed`)."""

    signature = inspect.signature(engine_fn)
    accepted = [*keyword_names(engine_fn), "progress", "plot", "distributed"]
    default_seed = signature.parameters["seed"].default if "seed" in signature.parameters else None

    @functools.wraps(engine_fn)
    def verb(*args: Any, progress: bool = True, plot: bool | str = "auto", callbacks: Iterable[object] = (),
             distributed: bool | str = "auto", **kwargs: Any) -> Any:
        check_keywords(engine_fn.__name__, kwargs, accepted)
        check_subscribers(progress, plot)
        ranks.check_mode(distributed)
        callbacks = checks.check_callbacks(callbacks)
        # A seeded run is kdnb's own: the caller's RNGs and loaders' shuffling are as they were, success or error
        # (seed=None draws from them, as the user's own loop would).
        seeded = kwargs.get("seed", default_seed) is not None
        untouched = checks.rng_preserved(*args, *kwargs.values()) if seeded else contextlib.nullcontext()
        with ranks.mode(distributed), warnings.catch_warnings(), untouched:
            ranks.share([*args, *kwargs.values()], kwargs.get("device", "auto"))
            if not ranks.is_main_process():
                warnings.simplefilter("ignore")  # under torchrun rank 0 warns for all, not once per process
            return engine_fn(*args, callbacks=subscribers(progress, plot, callbacks), **kwargs)

    params = list(signature.parameters.values())
    extra = [inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=True, annotation="bool"),
             inspect.Parameter("plot", inspect.Parameter.KEYWORD_ONLY, default="auto", annotation="bool | str"),
             inspect.Parameter("distributed", inspect.Parameter.KEYWORD_ONLY, default="auto", annotation="bool | str")]
    names = {p.name for p in params}
    params += [p for p in extra if p.name not in names]
    verb.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return verb  # type: ignore[return-value]


# Each engine verb below plugs in here (one line each); see with_subscribers.
from kdnb.engine.supervised import evaluate as _evaluate, train as _train  # noqa: E402

evaluate = reads_batches(keywords_checked(_evaluate))
train = reads_batches(with_subscribers(_train))
from kdnb.engine.measure import compare as _compare, measure as _measure  # noqa: E402 - no run, no subscribers


def leaves_rng_alone(engine_fn: F) -> F:
    """Wrap a verb that only looks (measure, compare): whatever it draws from the user's loaders, their next
    epoch shuffles as if it had never been called, whether it succeeds or fails."""

    @functools.wraps(engine_fn)
    def verb(*args: Any, **kwargs: Any) -> Any:
        restore_rng = checks.rng_state(*args[1:2], kwargs.get("data"), kwargs.get("data_or_example"))
        try:
            return engine_fn(*args, **kwargs)
        finally:
            restore_rng()

    return verb  # type: ignore[return-value]


measure = reads_batches(leaves_rng_alone(keywords_checked(_measure)))
compare = reads_batches(leaves_rng_alone(_compare))  # its own options are checked by name (``**measure_kwargs``)
from kdnb.engine.serialize import load as _load, save as _save  # noqa: E402

load, save = keywords_checked(_load), keywords_checked(_save)
from kdnb.engine.export import export as _export  # noqa: E402 - checks its arguments itself; no run

export = keywords_checked(_export)
from kdnb.engine.distill import distill as _distill  # noqa: E402

distill = reads_batches(with_subscribers(_distill))
from kdnb.engine.prune import make_permanent as _make_permanent  # noqa: E402 - no run, so no subscribers


@keywords_checked
@functools.wraps(_make_permanent)
def make_permanent(model):
    checks.check_model(model)  # the one check at the public entry; the engine folds its own copies unchecked
    return _make_permanent(model)


from kdnb.engine.prune import prune as _prune, sensitivity as _sensitivity  # noqa: E402

prune = reads_batches(with_subscribers(_prune))
sensitivity = reads_batches(with_subscribers(_sensitivity))
