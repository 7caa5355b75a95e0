"""The one training loop of kdnb. Training, distillation and fine-tuning after pruning all run here;
they differ only in the objective (what a step minimises) and the subscribers (who watches).

Stop-button safety: SIGINT is deferred to the end of the current step, so weights are never
half-updated; the run returns its history flagged "interrupted". A non-finite loss stops the run
before it touches the weights, and the message names the step.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from kdnb.engine import checks, distributed
from kdnb.engine.device import model_device, resolve_device, to_device
from kdnb.engine.events import Dispatcher, RunState
from kdnb.engine.history import History
from kdnb.engine.objective import StepOutput, Supervised
from kdnb.errors import KdnbError, warn

OptimizerSpec = torch.optim.Optimizer | Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer] | None
SchedulerSpec = Callable[[torch.optim.Optimizer], Any] | None
Objective = Callable[[torch.nn.Module, Any], StepOutput]


@dataclass(frozen=True)
class Settings:
    """The one set of training settings. Every verb that trains (`kdnb.train`, `kdnb.distill`, `kdnb.prune`'s
    fine-tuning, `kdnb.sensitivity`) takes exactly these, keyword-only after its data arguments, with these
    defaults; ``tests/test_settings.py`` keeps the verbs' signatures equal to this record.

    Args:
        optimizer: ``None`` (Adam with ``lr``), an optimizer, or a factory ``params -> optimizer``.
        lr: learning rate of the default Adam.
        scheduler: a factory ``optimizer -> LR scheduler``, stepped once per epoch (None: constant lr).
        amp: mixed precision (float16 autocast + grad scaling) on CUDA; ignored on CPU.
        grad_clip: clip the gradients' global norm to this before each step (None: no clipping).
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1"...
        seed: seeds torch, NumPy, Python and the loader's shuffling (None: leave the RNGs alone).
        callbacks: subscribers to the run's events (see `kdnb.engine.events.Callback`).
    """

    optimizer: OptimizerSpec = None
    lr: float = 1e-3
    scheduler: SchedulerSpec = None
    amp: bool = False
    grad_clip: float | None = None
    device: str | torch.device = "auto"
    seed: int | None = 0
    callbacks: Iterable[object] = ()


SETTINGS: dict[str, Any] = {f.name: f.default for f in fields(Settings)}  # name -> default


def settings_help(indent: str = "        ") -> str:
    """The ``Args:`` lines of `Settings`, for the docstring of a verb that takes them (the magics read it)."""
    lines = inspect.getdoc(Settings).split("Args:\n", 1)[1].splitlines()
    return "\n".join(indent + line[4:] for line in lines if line.strip())


def seed_everything(seed: int, data: Iterable | None = None) -> None:
    """Seed Python, NumPy and torch, and the loader's own shuffling generator if it has one."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = getattr(data, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(seed)


def make_optimizer(optimizer: OptimizerSpec, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam(lr) by default; an optimizer instance as is; a factory called with the parameters."""
    if optimizer is None:
        return torch.optim.Adam(params, lr=lr)
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if callable(optimizer):
        made = optimizer(params)
        if not isinstance(made, torch.optim.Optimizer):
            raise KdnbError("optimizer factory should return a torch.optim.Optimizer, "
                            f"got {type(made).__name__}; e.g. optimizer=lambda p: torch.optim.SGD(p, lr=0.1)")
        return made
    raise KdnbError(f"optimizer should be None, a torch.optim.Optimizer or a factory params -> optimizer, "
                    f"got {type(optimizer).__name__}")


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[dict[str, bool]]:
    """While active, a first Ctrl-C / stop button only sets a flag; a second one interrupts at once."""
    flag = {"hit": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if flag["hit"]:
            raise KeyboardInterrupt
        flag["hit"] = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _as_float(value: torch.Tensor | float) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def fit(
    model: torch.nn.Module,
    data: Iterable,
    val: Iterable | None = None,
    *,
    epochs: int = 5,
    objective: Objective | None = None,
    evaluate_fn: Callable[[torch.nn.Module, Iterable], dict[str, float]] | None = None,
    title: str = "train",
    check_inputs: bool = True,
    optimizer: OptimizerSpec = None,
    lr: float = 1e-3,
    scheduler: SchedulerSpec = None,
    amp: bool = False,
    grad_clip: float | None = None,
    device: str | torch.device = "auto",
    seed: int | None = 0,
    callbacks: Iterable[object] = (),
) -> History:
    """Train ``model`` in place on ``data`` for ``epochs`` and return its `History`.

    ``objective(model, batch) -> StepOutput`` defines the loss (hard-label cross-entropy by
    default); if it is an ``nn.Module`` its parameters (e.g. FitNets adapters) are trained too.
    ``evaluate_fn(model, val)`` returns extra per-epoch metrics; by default val loss and accuracy.
    The training settings (optimizer ... callbacks) are `Settings`.
    """
    settings = Settings(optimizer=optimizer, lr=lr, scheduler=scheduler, amp=amp, grad_clip=grad_clip,
                        device=device, seed=seed, callbacks=callbacks)
    objective = objective or Supervised()
    _check(model, data, val, epochs, settings, check_inputs)
    ranks = distributed.start(resolve_device(settings.device), settings.seed)  # one process: does nothing
    data = ranks.shard(data)
    run = _prepare(model, data, objective, epochs, settings, title, ranks)
    return _run(run, data, val, evaluate_fn)


def _check(model: torch.nn.Module, data: Iterable, val: Iterable | None, epochs: int, settings: Settings,
           check_inputs: bool) -> None:
    """Every argument, before anything changes: a bad input leaves the model exactly where it was."""
    checks.check_model(model)
    checks.check_loader(data, "data")
    if val is not None:
        checks.check_loader(val, "val")
    checks.check_positive("epochs", epochs, integer=True)
    checks.check_positive("lr", settings.lr)
    resolve_device(settings.device)
    if check_inputs:
        here = model_device(model)
        num_classes = checks.check_model_fits_data(model, to_device(checks.first_batch(data, "data"), here), here)
        checks.check_labels_in_range(data, num_classes)


@dataclass
class _Run:
    """What one call of `fit` works with, made by `_prepare`."""

    model: torch.nn.Module
    trained: torch.nn.Module  # what steps call: the model, or DistributedDataParallel around it
    ranks: distributed.Local
    objective: Objective
    device: torch.device
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    grad_clip: float | None
    state: RunState
    events: Dispatcher
    history: History = field(default_factory=History)


def _prepare(model: torch.nn.Module, data: Iterable, objective: Objective, epochs: int, settings: Settings,
             title: str, ranks: distributed.Local) -> _Run:
    """Move model and objective to the device, seed, and make the optimizer, scheduler and grad scaler."""
    device = resolve_device(settings.device)
    model.to(device)
    if isinstance(objective, torch.nn.Module):
        objective.to(device)
    if settings.seed is not None:
        seed_everything(settings.seed, data)
    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(objective, torch.nn.Module):
        params += [p for p in objective.parameters() if p.requires_grad]
    opt = make_optimizer(settings.optimizer, params, settings.lr)
    use_amp = bool(settings.amp) and device.type == "cuda"
    try:
        steps_per_epoch = len(data)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = 0
    history = History()
    state = RunState(model=model, history=history, epochs=epochs, steps_per_epoch=steps_per_epoch, title=title)
    return _Run(model=model, trained=ranks.wrap(model, objective), ranks=ranks, objective=objective, device=device,
                params=params, optimizer=opt,
                scheduler=settings.scheduler(opt) if settings.scheduler is not None else None,
                scaler=torch.amp.GradScaler("cuda") if use_amp else None, grad_clip=settings.grad_clip,
                state=state, events=Dispatcher(settings.callbacks), history=history)


def _run(run: _Run, data: Iterable, val: Iterable | None, evaluate_fn: Callable | None) -> History:
    """The epochs, between the run's start and end events; always ends with a status and the model's mode."""
    model, history, state = run.model, run.history, run.state
    was_training = model.training
    run.events.emit("on_run_start", state)
    try:
        with deferred_interrupt() as interrupt:
            for epoch in range(state.epochs):
                state.epoch = epoch
                tally = _train_epoch(run, data, interrupt)
                if tally is None or interrupt["hit"] or state.stop:
                    break  # diverged; or stopped: a partial epoch is not logged as an epoch, its steps are
                _finish_epoch(run, tally, val, evaluate_fn)
                if run.ranks.agree_to_stop(interrupt, state):
                    break
            run.ranks.align(model)
            _set_status(history, state, interrupt["hit"])
    except KeyboardInterrupt:
        # Raised outside an optimizer step (data loading, forward, backward, a callback):
        # the weights are those after the last completed step.
        _mark_interrupted(history, state)
    finally:
        model.train(was_training)
        if history.status == "running":
            history.status = "failed"
        run.events.emit("on_run_end", state)
    return history


def _train_epoch(run: _Run, data: Iterable, interrupt: dict[str, bool]) -> _EpochTally | None:
    """One pass over ``data``, step by step (until a stop is asked); None when a non-finite loss ended the run."""
    last_good = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    run.model.train()
    tally = _EpochTally(started=time.perf_counter())
    run.ranks.set_epoch(data, run.state.epoch)
    for batch in data:
        out = _forward(run, to_device(batch, run.device))
        terms = run.ranks.mean(_terms(out))  # over all ranks: a NaN on one is a NaN on all, before any update
        if not math.isfinite(terms["loss"]):
            _diverged(run, last_good, terms["loss"])
            return None
        _optimizer_step(run, out.loss)
        _log_step(run, out, terms, tally)
        run.events.emit("on_step_end", run.state)
        if run.ranks.agree_to_stop(interrupt, run.state):
            break
    return tally


@dataclass
class _EpochTally:
    """Sums over one epoch's steps, for its means."""

    started: float
    sums: dict[str, float] = field(default_factory=dict)
    correct: int = 0
    seen: int = 0
    batches: int = 0


def _forward(run: _Run, batch: Any) -> StepOutput:
    if run.scaler is None:
        return run.objective(run.trained, batch)
    with torch.autocast(device_type="cuda", dtype=torch.float16):
        return run.objective(run.trained, batch)


def _optimizer_step(run: _Run, loss: torch.Tensor) -> None:
    """Backward, clip (after unscaling under AMP), step."""
    opt, scaler = run.optimizer, run.scaler
    opt.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    run.ranks.after_backward()
    if run.grad_clip:
        if scaler is not None:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(run.params, run.grad_clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()


def _terms(out: StepOutput) -> dict[str, float]:
    return {"loss": _as_float(out.loss), **{name: _as_float(value) for name, value in out.terms.items()}}


def _log_step(run: _Run, out: StepOutput, terms: dict[str, float], tally: _EpochTally) -> None:
    run.state.step += 1
    tally.batches += 1
    run.history.log_step(terms)
    run.state.terms = terms
    for name, value in terms.items():
        tally.sums[name] = tally.sums.get(name, 0.0) + value
    if out.logits is not None and out.targets is not None:
        tally.correct += int((out.logits.detach().argmax(dim=1) == out.targets).sum())
        tally.seen += out.targets.numel()


def _finish_epoch(run: _Run, tally: _EpochTally, val: Iterable | None, evaluate_fn: Callable | None) -> None:
    """Step the scheduler, log the epoch's means and val metrics, tell the subscribers."""
    if run.scheduler is not None:
        run.scheduler.step()
    run.ranks.align(run.model)
    tally.correct, tally.seen = run.ranks.total(tally.correct, tally.seen)
    batches = max(tally.batches, 1)
    metrics = {"epoch": run.state.epoch + 1, "train_loss": tally.sums.get("loss", float("nan")) / batches}
    if tally.seen:
        metrics["train_acc"] = tally.correct / tally.seen
    metrics.update({f"train_{k}": v / batches for k, v in tally.sums.items() if k != "loss"})
    if val is not None:
        if evaluate_fn is not None:
            metrics.update(evaluate_fn(run.model, val))
        else:
            result = run.ranks.evaluate(run.model, val)  # sharded over the ranks
            metrics.update(val_loss=result["loss"], val_acc=result["accuracy"])
    metrics["time_s"] = run.ranks.slowest(time.perf_counter() - tally.started)
    metrics.update(run.state.extra)
    run.history.log_epoch(metrics)
    run.events.emit("on_epoch_end", run.state)


def _diverged(run: _Run, last_good: dict[str, torch.Tensor], loss_value: float) -> None:
    """A non-finite loss: stop before the update, keep sound weights, say which step and what to try."""
    _keep_last_good(run.model, last_good)
    history, state = run.history, run.state
    history.status = "diverged"
    history.message = (f"loss became {loss_value} at step {state.step + 1} (epoch {state.epoch + 1}); "
                       f"stopped before updating, the model keeps the weights after step "
                       f"{state.step}. Try a lower lr or grad_clip=1.0")
    warn(history.message, RuntimeWarning)


def _set_status(history: History, state: RunState, interrupted: bool) -> None:
    if history.status == "diverged":
        return
    if interrupted:
        _mark_interrupted(history, state)
    elif state.stop:
        history.status = "stopped"
        history.message = f"stopped by a callback after step {state.step}"
    else:
        history.status = "completed"


def _mark_interrupted(history: History, state: RunState) -> None:
    history.status = "interrupted"
    history.message = (f"interrupted after step {state.step} (epoch {state.epoch + 1}); "
                       f"the model holds the weights after step {state.step}")


def _keep_last_good(model: torch.nn.Module, last_good: dict[str, torch.Tensor]) -> None:
    """The weights that produced a non-finite loss may themselves be broken: fall back to the epoch start."""
    if all(torch.isfinite(p).all() for p in model.parameters()):
        return
    model.load_state_dict(last_good)
