"""The public verbs. Each is a plain-PyTorch engine function; here it also gets the subscribers
a person at a notebook wants: a progress bar and (``plot="auto"``) the live loss chart.

Magics and Python calls go through these same functions, so both show the same.
"""
from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from kdnb.engine import checks, loop
from kdnb.engine import distributed as ranks
from kdnb.env import plotting_enabled
from kdnb.errors import KdnbError

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


def with_subscribers(engine_fn: F) -> F:
    """Wrap an engine verb (which takes ``callbacks=``) so it also takes ``progress=``, ``plot=`` and
    ``distributed=`` (how every training run of the call is spread over processes, `kdnb.engine.distributed`)."""

    @functools.wraps(engine_fn)
    def verb(*args: Any, progress: bool = True, plot: bool | str = "auto", callbacks: Iterable[object] = (),
             distributed: bool | str = "auto", **kwargs: Any) -> Any:
        check_subscribers(progress, plot)
        ranks.check_mode(distributed)
        callbacks = checks.check_callbacks(callbacks)
        with ranks.mode(distributed), warnings.catch_warnings():
            ranks.share([*args, *kwargs.values()], kwargs.get("device", "auto"))
            if not ranks.is_main_process():
                warnings.simplefilter("ignore")  # under torchrun rank 0 warns for all, not once per process
            return engine_fn(*args, callbacks=subscribers(progress, plot, callbacks), **kwargs)

    signature = inspect.signature(engine_fn)
    params = list(signature.parameters.values())
    extra = [inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=True, annotation="bool"),
             inspect.Parameter("plot", inspect.Parameter.KEYWORD_ONLY, default="auto", annotation="bool | str"),
             inspect.Parameter("distributed", inspect.Parameter.KEYWORD_ONLY, default="auto", annotation="bool | str")]
    names = {p.name for p in params}
    params += [p for p in extra if p.name not in names]
    verb.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return verb  # type: ignore[return-value]


def _train(model, data, val=None, *, epochs: int = 5, loss=None, optimizer=None, lr: float = 1e-3,
           scheduler=None, amp: bool = False, grad_clip: float | None = None, device: str = "auto",
           seed: int | None = 0, callbacks: Iterable[object] = ()):
    from kdnb.engine.objective import Supervised

    checks.check_loss(loss)
    return loop.fit(model, data, val, epochs=epochs, objective=Supervised(loss) if loss is not None else None,
                    title="train", optimizer=optimizer, lr=lr, scheduler=scheduler, amp=amp, grad_clip=grad_clip,
                    device=device, seed=seed, callbacks=callbacks)


_train.__doc__ = f"""Train ``model`` in place with hard labels and return its `History`.

    Args:
        model: any ``nn.Module`` that maps a batch of inputs to logits ``(batch, classes)``.
        data: training ``DataLoader`` of ``(inputs, labels)``.
        val: optional validation loader; val loss and accuracy are logged each epoch.
        epochs: passes over ``data``.
        loss: ``loss(logits, labels)``; cross-entropy by default. It may return
            ``(loss, {{"term": value}})`` to log extra terms.
{loop.settings_help()}
        progress: show a tqdm progress bar.
        plot: "auto" shows the live loss chart in a notebook; True forces it, False hides it.
        distributed: "auto" runs on every process of a torch.distributed group (under ``torchrun``):
            DistributedDataParallel, the data sharded, the same History on each rank; True requires
            such a group (an error otherwise); False trains each process alone on all the data.

    Returns:
        History: per-step loss, per-epoch train/val loss and accuracy, status ("completed",
        "interrupted" by the stop button, or "diverged" on a non-finite or exploding loss or exploding
        weights). Bad input raises a one-line `KdnbError` before anything changes; any error during the
        run puts ``model`` back exactly as it was given.
    """

train = with_subscribers(_train)
train.__name__ = train.__qualname__ = "train"

def evaluate(model, data) -> dict[str, float]:
    """``{"loss": mean cross-entropy, "accuracy": top-1}`` of ``model`` over the labelled loader ``data``,
    in eval mode; the model's weights and mode are left as they were."""
    from kdnb.engine.evaluate import evaluate as evaluate_model

    checks.check_model(model)
    checks.check_loader(data, "data")
    restore_rng = checks.rng_state(data)  # evaluating draws every batch; the loader shuffles on as before
    try:
        return evaluate_model(model, data)
    finally:
        restore_rng()


# Each engine verb below plugs in here (one line each); see with_subscribers.
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


measure = leaves_rng_alone(_measure)
compare = leaves_rng_alone(_compare)
from kdnb.engine.serialize import load, save  # noqa: E402,F401
from kdnb.engine.export import export  # noqa: E402,F401 - checks its arguments itself; no run, no subscribers
from kdnb.engine.distill import distill as _distill  # noqa: E402

distill = with_subscribers(_distill)
from kdnb.engine.prune import make_permanent as _make_permanent  # noqa: E402 - no run, so no subscribers


@functools.wraps(_make_permanent)
def make_permanent(model):
    checks.check_model(model)  # the one check at the public entry; the engine folds its own copies unchecked
    return _make_permanent(model)


from kdnb.engine.prune import prune as _prune, sensitivity as _sensitivity  # noqa: E402

prune = with_subscribers(_prune)
sensitivity = with_subscribers(_sensitivity)
