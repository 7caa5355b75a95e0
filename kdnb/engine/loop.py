"""The one training loop of kdnb. Training, distillation and fine-tuning after pruning all run here;
they differ only in the objective (what a step minimises) and the subscribers (who watches).

Stop-button safety: SIGINT is deferred to the end of the current step, so weights are never
half-updated; the run returns its history flagged "interrupted", at whatever phase the stop came.
A non-finite or exploding loss, or exploding weights, stop the run flagged "diverged", with the step
and the advice, sound weights kept. Each batch's labels are checked (a min and a max); any exception
puts the model back exactly as `fit` was given it (`_Undo`), so a failed in-place call leaves no trace.
"""
from __future__ import annotations

import contextlib
import copy
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

from kdnb.engine import batches, checks, distributed
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
        scheduler: a factory ``optimizer -> LR scheduler`` stepped each epoch, "cosine" (lr annealed to 0), or None.
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

    def __post_init__(self) -> None:
        checks.check_settings(self)  # every verb that trains builds one: the settings are checked at its entry


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
        made = _call_factory("optimizer", optimizer, params, "optimizer=lambda p: torch.optim.SGD(p, lr=0.1)")
        if not isinstance(made, torch.optim.Optimizer):
            raise KdnbError("optimizer factory should return a torch.optim.Optimizer, "
                            f"got {type(made).__name__}; pass e.g. optimizer=lambda p: torch.optim.SGD(p, lr=0.1)")
        return made
    raise KdnbError(f"optimizer should be None, a torch.optim.Optimizer or a factory params -> optimizer, "
                    f"got {type(optimizer).__name__}; pass e.g. optimizer=lambda p: torch.optim.SGD(p, lr=0.1)")


def _call_factory(name: str, factory: Callable[[Any], Any], argument: Any, example: str) -> Any:
    """The user's factory called once; its failure is one line naming the setting (the stop button passes)."""
    try:
        return factory(argument)
    except (KdnbError, KeyboardInterrupt):
        raise
    except Exception as error:  # noqa: BLE001 - the user's factory failed: one line naming it
        raise KdnbError(f"{name} factory failed: {type(error).__name__}: {checks.first_line(error)}; pass e.g. "
                        f"{example}") from None


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
    callbacks = checks.check_callbacks(callbacks)  # once into a list: a generator of subscribers is read once
    settings = Settings(optimizer=optimizer, lr=lr, scheduler=scheduler, amp=amp, grad_clip=grad_clip,
                        device=device, seed=seed, callbacks=callbacks)
    objective = objective or Supervised()
    try:
        num_classes = _check(model, data, val, epochs, settings, objective, evaluate_fn, check_inputs)
    except KeyboardInterrupt:
        return _interrupted_before_start()
    undo = _Undo.take(model, settings.optimizer, data, val)
    try:
        ranks = distributed.start(resolve_device(settings.device), settings.seed)  # one process: does nothing
        data = ranks.shard(data)
        run = _prepare(model, data, objective, epochs, settings, title, ranks)
    except KeyboardInterrupt:
        undo.restore(model)
        return _interrupted_before_start()
    except BaseException:
        undo.restore(model)
        raise
    run.num_classes = num_classes
    return _run(run, data, val, evaluate_fn, undo)


def _check(model: torch.nn.Module, data: Iterable, val: Iterable | None, epochs: int, settings: Settings,
           objective: Objective, evaluate_fn: Callable | None, check_inputs: bool) -> int | None:
    """Every argument, before anything changes: a bad input leaves the model exactly where it was.

    Returns the number of classes when each batch's labels are to be checked against it (the first batch
    was checked, and the dataset's labels were not all checked at once), else None."""
    checks.check_model(model)
    checks.check_loader(data, "data")
    if val is not None:
        checks.check_loader(val, "val")
    checks.check_positive("epochs", epochs, integer=True)
    resolve_device(settings.device)
    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(objective, torch.nn.Module):
        params += [p for p in objective.parameters() if p.requires_grad]
    checks.check_trainable(params)
    here, num_classes = model_device(model), None
    if check_inputs:
        batch = to_device(checks.first_batch(data, "data"), here)
        if getattr(objective, "needs_labels", False):
            checks.check_labelled(batch, checks.check_batch(batch)[2], "data", "training with cross-entropy")
        num_classes = checks.check_model_fits_data(model, batch, here)
        every_label_checked = checks.check_labels_in_range(data, num_classes)  # then no batch needs its own check
        labelled = checks.check_batch(batch)[2] is not None
        num_classes = num_classes if labelled and not every_label_checked else None
    if val is not None and evaluate_fn is None:  # the default evaluation needs labelled batches the model takes
        val_batch = to_device(checks.first_batch(val, "val"), here)
        checks.check_labelled(val_batch, checks.check_batch(val_batch, "val")[2], "val",
                              "the val loss and accuracy")
        checks.check_labels_in_range(val, checks.check_model_fits_data(model, val_batch, here, data_name="val"), "val")
    return num_classes


@dataclass
class _Undo:
    """What `fit` was given, to put back when it fails: an in-place verb that raises leaves no trace
    (weights, buffers, gradients, each module's mode, the device, an optimizer's state, every RNG)."""

    device: torch.device
    state: dict[str, torch.Tensor]
    grads: list[tuple[torch.nn.Parameter, torch.Tensor | None]]
    modes: list[tuple[torch.nn.Module, bool]]
    optimizer: torch.optim.Optimizer | None
    optimizer_state: dict[str, Any] | None
    restore_rng: Callable[[], None]

    @classmethod
    def take(cls, model: torch.nn.Module, optimizer: Any, data: Iterable, val: Iterable | None) -> _Undo:
        instance = optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
        return cls(device=model_device(model),
                   state={k: v.detach().clone() for k, v in model.state_dict().items()},
                   grads=[(p, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()],
                   modes=[(m, m.training) for m in model.modules()],
                   optimizer=instance,
                   optimizer_state=copy.deepcopy(instance.state_dict()) if instance is not None else None,
                   restore_rng=checks.rng_state(data, val))

    def restore(self, model: torch.nn.Module) -> None:
        if model_device(model) != self.device:
            model.to(self.device)
        # not strict: a schedule may have masked the model mid-run (prune's AGP); prune's own entry restores those
        model.load_state_dict(self.state, strict=False)
        for param, grad in self.grads:
            param.grad = grad
        restore_modes(self.modes)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(self.optimizer_state)
        self.restore_rng()


def restore_modes(modes: list[tuple[torch.nn.Module, bool]]) -> None:
    """Each module back in its own mode (a frozen BatchNorm inside a training model stays in eval)."""
    for module, training in modes:
        module.training = training


def _interrupted_before_start() -> History:
    return History(status="interrupted", message="interrupted before the first step; the model is unchanged")


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
    num_classes: int | None = None  # labels of each batch are checked against it (None: not class labels)
    divergence: _Divergence | None = None


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
                scheduler=_make_scheduler(settings.scheduler, opt, epochs),
                scaler=torch.amp.GradScaler("cuda") if use_amp else None, grad_clip=settings.grad_clip,
                state=state, events=Dispatcher(settings.callbacks), history=history)


def _make_scheduler(scheduler: SchedulerSpec | str, optimizer: torch.optim.Optimizer, epochs: int) -> Any:
    if scheduler is None:
        return None
    if scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    made = _call_factory("scheduler", scheduler, optimizer,
                         "scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1)")
    if not callable(getattr(made, "step", None)):
        raise KdnbError(f"scheduler factory should return an LR scheduler (with .step()), got "
                        f"{type(made).__name__}; pass e.g. scheduler=lambda opt: "
                        "torch.optim.lr_scheduler.StepLR(opt, step_size=1)")
    return made


def _run(run: _Run, data: Iterable, val: Iterable | None, evaluate_fn: Callable | None, undo: _Undo) -> History:
    """The epochs, between the run's start and end events; always ends with a status and the model's modes.
    An exception puts back everything `fit` was given (``undo``) before it propagates."""
    history, state = run.history, run.state
    try:
        with deferred_interrupt() as interrupt:
            try:
                run.events.emit("on_run_start", state)
                _epochs(run, data, val, evaluate_fn, interrupt)
                _set_status(history, state, interrupt["hit"])
            except KeyboardInterrupt:
                # Raised outside an optimizer step (data loading, forward, backward, a callback, val):
                # the weights are those after the last completed step.
                _mark_interrupted(history, state)
            restore_modes(undo.modes)
            try:
                run.events.emit("on_run_end", state)
            except KeyboardInterrupt:
                _mark_interrupted(history, state)
    except BaseException:
        history.status = "failed"
        undo.restore(run.model)
        with contextlib.suppress(Exception):
            run.events.emit("on_run_end", state)  # a progress bar still closes
        raise
    return history


def _epochs(run: _Run, data: Iterable, val: Iterable | None, evaluate_fn: Callable | None,
            interrupt: dict[str, bool]) -> None:
    run.divergence = _Divergence(run.params)
    for epoch in range(run.state.epochs):
        run.state.epoch = epoch
        tally = _train_epoch(run, data, interrupt)
        if tally is None or interrupt["hit"] or run.state.stop:
            break  # diverged; or stopped: a partial epoch is not logged as an epoch, its steps are
        _finish_epoch(run, tally, val, evaluate_fn)
        if run.ranks.agree_to_stop(interrupt, run.state):
            break
    run.ranks.align(run.model)


def _train_epoch(run: _Run, data: Iterable, interrupt: dict[str, bool]) -> _EpochTally | None:
    """One pass over ``data``, step by step (until a stop is asked); None when the run diverged."""
    last_good = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    start_step = run.state.step
    run.model.train()
    tally = _EpochTally(started=time.perf_counter())
    epoch = run.state.epoch + 1
    run.ranks.set_epoch(data, run.state.epoch)
    numbered = checks.numbered_batches(data, lambda i: f"batch {i + 1} of epoch {epoch} (the model is restored)")
    for index, batch in numbered:
        batch = to_device(batch, run.device)
        where = f"in batch {index + 1} of epoch {epoch}"
        if run.num_classes is not None:
            args, kwargs, y = checks.check_batch(batch, f"data (batch {index + 1} of epoch {epoch})")
            if y is not None:
                checks.check_labels(y, (batches.batch_size(args, kwargs), *y.shape[1:], run.num_classes), where)
        out = _forward(run, batch, where)
        loss_value = _loss_value(out.loss, where)  # the step's one sync: the last step's weight norm is ready too
        # Over the ranks, in one all-reduce: the terms averaged (a NaN on one is a NaN on all) and a stop
        # asked on any rank after the last step, so every rank ends after that same step.
        terms, stop = run.ranks.report(_terms(out, loss_value), interrupt, run.state)
        if stop:
            break
        if _blew_up(run, last_good, start_step, terms["loss"]):
            return None
        _optimizer_step(run, out.loss)
        _log_step(run, out, terms, tally)
        if run.state.step % _Divergence.WEIGHTS_EVERY == 0:
            run.divergence.measure(run.state.step)
        run.events.emit("on_step_end", run.state)
        if run.ranks.stops_after_step(interrupt, run.state):
            break
    run.ranks.agree_to_stop(interrupt, run.state)  # a stop asked after an epoch's last step
    run.divergence.measure(run.state.step)
    return None if _blew_up(run, last_good, start_step) else tally


def _blew_up(run: _Run, last_good: dict[str, torch.Tensor], start_step: int, loss_value: float | None = None) -> bool:
    """Exploded weights after the last step, or a non-finite or exploding loss now: the run is flagged diverged."""
    step = run.divergence.exploded_at()
    if step is not None:
        _diverged(run, last_good, start_step, f"the weights' norm grew to {run.divergence.norm:.3g} at step {step}")
        return True
    if loss_value is not None and (not math.isfinite(loss_value) or run.divergence.loss_exploded(loss_value)):
        _diverged(run, last_good, start_step, f"loss became {loss_value:.4g} at step {run.state.step + 1}")
        return True
    return False


class _Divergence:
    """A run that has blown up without a NaN: the loss grown by orders of magnitude over the first step's
    (at least ``LOSS_GROWTH`` times, measured from 1 for smaller losses), or the weights' norm by
    ``WEIGHT_GROWTH`` times. Real training never does either; a too-large lr does within a few steps.
    The norm is taken every ``WEIGHTS_EVERY`` steps and at each epoch's end (it costs about a step's
    optimizer update on a small CPU model; every step would show in bench/loop_overhead.py)."""

    LOSS_GROWTH = 1e3
    WEIGHT_GROWTH = 1e3
    WEIGHTS_EVERY = 16

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params, self.first_loss = params, None
        self.start_norm = max(float(self._norm()), 1.0)
        self.norm = self.start_norm
        self.pending: tuple[int, torch.Tensor] | None = None

    @torch.no_grad()
    def _norm(self) -> torch.Tensor:
        return torch.nn.utils.get_total_norm(self.params) if self.params else torch.zeros(())

    def loss_exploded(self, loss: float) -> bool:
        if self.first_loss is None:
            self.first_loss = max(abs(loss), 1.0)
        return abs(loss) > self.LOSS_GROWTH * self.first_loss

    def measure(self, step: int) -> None:
        """Queue the weights' norm after ``step``; it is read at the next sync (no GPU stall of its own)."""
        self.pending = (step, self._norm())

    def exploded_at(self) -> int | None:
        """The step after which the queued norm was too large, else None."""
        if self.pending is None:
            return None
        (step, norm), self.pending = self.pending, None
        self.norm = float(norm)
        return step if self._too_large() else None

    def weights_exploded(self) -> bool:
        self.norm = float(self._norm())
        return self._too_large()

    def _too_large(self) -> bool:
        return not math.isfinite(self.norm) or self.norm > self.WEIGHT_GROWTH * self.start_norm


@dataclass
class _EpochTally:
    """Sums over one epoch's steps, for its means (``correct`` stays a tensor until the epoch ends: no sync)."""

    started: float
    sums: dict[str, float] = field(default_factory=dict)
    correct: int | torch.Tensor = 0
    seen: int = 0
    batches: int = 0


def _forward(run: _Run, batch: Any, where: str) -> StepOutput:
    """The objective on one batch; a failure names the batch (later batches may differ from the first)."""
    try:
        if run.scaler is None:
            return run.objective(run.trained, batch)
        with torch.autocast(device_type="cuda", dtype=torch.float16):
            return run.objective(run.trained, batch)
    except (KdnbError, KeyboardInterrupt):
        raise
    except Exception as error:  # noqa: BLE001 - one line naming the batch; the cause stays chained
        raise KdnbError(f"the step failed {where}: {type(error).__name__}: {checks.first_line(error)}; check the "
                        "model and the loss on this batch (the model is restored; the cause is chained)") from error


def _loss_value(loss: Any, where: str) -> float:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.dtype.is_floating_point:
        got = f"shape {tuple(loss.shape)} {loss.dtype}" if isinstance(loss, torch.Tensor) else checks.shown(loss)
        raise KdnbError(f"the loss {where} should be a scalar float tensor (or (tensor, {{'term': value}})), "
                        f"got {got}; reduce it, e.g. with .mean() (the model is restored)")
    return float(loss.detach())


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


def _terms(out: StepOutput, loss_value: float) -> dict[str, float]:
    return {"loss": loss_value, **{name: _as_float(value) for name, value in out.terms.items()}}


def _log_step(run: _Run, out: StepOutput, terms: dict[str, float], tally: _EpochTally) -> None:
    run.state.step += 1
    tally.batches += 1
    run.history.log_step(terms)
    run.state.terms = terms
    for name, value in terms.items():
        tally.sums[name] = tally.sums.get(name, 0.0) + value
    if out.logits is not None and out.targets is not None:
        tally.correct = tally.correct + (out.logits.detach().argmax(dim=1) == out.targets).sum()
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
            result = run.ranks.evaluate(run.model, val, "val")  # sharded over the ranks
            metrics.update(val_loss=result["loss"], val_acc=result["accuracy"])
    metrics["time_s"] = run.ranks.slowest(time.perf_counter() - tally.started)
    metrics.update(run.state.extra)
    run.history.log_epoch(metrics)
    run.events.emit("on_epoch_end", run.state)


def _diverged(run: _Run, last_good: dict[str, torch.Tensor], start_step: int, what: str) -> None:
    """Stop a run that blew up: keep sound weights, say which step and what to try."""
    history, state = run.history, run.state
    if _keep_last_good(run, last_good):
        kept = f"the model is back to its weights at the start of epoch {state.epoch + 1} (after step {start_step})"
    else:
        kept = f"stopped before updating, the model keeps the weights after step {state.step}"
    history.status = "diverged"
    history.message = f"{what} (epoch {state.epoch + 1}); {kept}. Try a lower lr (now {_lr(run)}) or grad_clip=1.0"
    warn(history.message, RuntimeWarning)


def _lr(run: _Run) -> str:
    return f"{run.optimizer.param_groups[0].get('lr', float('nan')):.3g}" if run.optimizer.param_groups else "?"


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


def _keep_last_good(run: _Run, last_good: dict[str, torch.Tensor]) -> bool:
    """The weights that produced a non-finite or exploding loss may themselves be broken (non-finite or
    exploded): then fall back to the epoch start. Returns whether it did."""
    if all(torch.isfinite(p).all() for p in run.model.parameters()) and not run.divergence.weights_exploded():
        return False
    run.model.load_state_dict(last_good)
    return True
