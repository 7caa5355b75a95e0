"""The one training loop of kdnb. Training, distillation and fine-tuning after pruning all run here;
they differ only in the objective (what a step minimises) and the subscribers (who watches).

Stop-button safety: SIGINT is deferred to the end of the current step, so weights are never
half-updated; the run returns its history flagged "interrupted". A non-finite loss stops the run
before it touches the weights, and the message names the step.
"""
from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from kdnb.engine import checks
from kdnb.engine.device import model_device, resolve_device, to_device
from kdnb.engine.errors import KdnbError
from kdnb.engine.evaluate import evaluate
from kdnb.engine.events import Dispatcher, RunState
from kdnb.engine.history import History
from kdnb.engine.objective import StepOutput, Supervised

OptimizerSpec = torch.optim.Optimizer | Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer] | None


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
    optimizer: OptimizerSpec = None,
    lr: float = 1e-3,
    objective: Callable[[torch.nn.Module, Any], StepOutput] | None = None,
    device: str | torch.device = "auto",
    amp: bool = False,
    seed: int | None = 0,
    callbacks: Iterable[object] = (),
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    grad_clip: float | None = None,
    evaluate_fn: Callable[[torch.nn.Module, Iterable], dict[str, float]] | None = None,
    title: str = "train",
    check_inputs: bool = True,
) -> History:
    """Train ``model`` in place on ``data`` for ``epochs`` and return its `History`.

    ``objective(model, batch) -> StepOutput`` defines the loss (hard-label cross-entropy by
    default); if it is an ``nn.Module`` its parameters (e.g. FitNets adapters) are trained too.
    ``evaluate_fn(model, val)`` returns extra per-epoch metrics; by default val loss and accuracy.
    ``callbacks`` receive the run's events. ``seed`` makes the run reproducible (None: don't seed).
    """
    checks.check_model(model)
    checks.check_loader(data, "data")
    if val is not None:
        checks.check_loader(val, "val")
    checks.check_positive("epochs", epochs, integer=True)
    checks.check_positive("lr", lr)
    device = resolve_device(device)
    objective = objective or Supervised()
    if check_inputs:  # before moving the model, so a bad input leaves it exactly where it was
        here = model_device(model)
        num_classes = checks.check_model_fits_data(model, to_device(checks.first_batch(data, "data"), here), here)
        checks.check_labels_in_range(data, num_classes)
    model.to(device)
    if isinstance(objective, torch.nn.Module):
        objective.to(device)
    if seed is not None:
        seed_everything(seed, data)

    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(objective, torch.nn.Module):
        params += [p for p in objective.parameters() if p.requires_grad]
    opt = make_optimizer(optimizer, params, lr)
    sched = scheduler(opt) if scheduler is not None else None
    use_amp = bool(amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    history = History()
    try:
        steps_per_epoch = len(data)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = 0
    state = RunState(model=model, history=history, epochs=epochs, steps_per_epoch=steps_per_epoch, title=title)
    events = Dispatcher(callbacks)
    was_training = model.training
    events.emit("on_run_start", state)
    try:
        with deferred_interrupt() as interrupt:
            for epoch in range(epochs):
                state.epoch = epoch
                last_good = {k: v.detach().clone() for k, v in model.state_dict().items()}
                model.train()
                started = time.perf_counter()
                sums: dict[str, float] = {}
                correct = seen = batches = 0
                for batch in data:
                    batch = to_device(batch, device)
                    if use_amp:
                        with torch.autocast(device_type="cuda", dtype=torch.float16):
                            out = objective(model, batch)
                    else:
                        out = objective(model, batch)
                    loss_value = float(out.loss.detach())
                    if not math.isfinite(loss_value):
                        _keep_last_good(model, last_good)
                        history.status = "diverged"
                        history.message = (f"loss became {loss_value} at step {state.step + 1} (epoch {epoch + 1}); "
                                           f"stopped before updating, the model keeps the weights after step "
                                           f"{state.step}. Try a lower lr or grad_clip=1.0")
                        warnings.warn(history.message, RuntimeWarning, stacklevel=2)
                        return history
                    opt.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(out.loss).backward()
                        if grad_clip:
                            scaler.unscale_(opt)
                            torch.nn.utils.clip_grad_norm_(params, grad_clip)
                        scaler.step(opt)
                        scaler.update()
                    else:
                        out.loss.backward()
                        if grad_clip:
                            torch.nn.utils.clip_grad_norm_(params, grad_clip)
                        opt.step()
                    state.step += 1
                    batches += 1
                    terms = {"loss": loss_value}
                    terms.update({name: _as_float(value) for name, value in out.terms.items()})
                    history.log_step(terms)
                    state.terms = terms
                    for name, value in terms.items():
                        sums[name] = sums.get(name, 0.0) + value
                    if out.logits is not None and out.targets is not None:
                        correct += int((out.logits.detach().argmax(dim=1) == out.targets).sum())
                        seen += out.targets.numel()
                    events.emit("on_step_end", state)
                    if interrupt["hit"] or state.stop:
                        break
                if interrupt["hit"] or state.stop:
                    break  # a partial epoch is not logged as an epoch; its steps are
                if sched is not None:
                    sched.step()
                metrics = {"epoch": epoch + 1, "train_loss": sums.get("loss", float("nan")) / max(batches, 1)}
                if seen:
                    metrics["train_acc"] = correct / seen
                metrics.update({f"train_{k}": v / max(batches, 1) for k, v in sums.items() if k != "loss"})
                if val is not None:
                    if evaluate_fn is not None:
                        metrics.update(evaluate_fn(model, val))
                    else:
                        result = evaluate(model, val)
                        metrics.update(val_loss=result["loss"], val_acc=result["accuracy"])
                metrics["time_s"] = time.perf_counter() - started
                metrics.update(state.extra)
                history.log_epoch(metrics)
                events.emit("on_epoch_end", state)
                if interrupt["hit"] or state.stop:
                    break
            if interrupt["hit"]:
                _mark_interrupted(history, state)
            elif state.stop:
                history.status = "stopped"
                history.message = f"stopped by a callback after step {state.step}"
            else:
                history.status = "completed"
    except KeyboardInterrupt:
        # Raised outside an optimizer step (data loading, forward, backward, a callback):
        # the weights are those after the last completed step.
        _mark_interrupted(history, state)
    finally:
        model.train(was_training)
        if history.status == "running":
            history.status = "failed"
        events.emit("on_run_end", state)
    return history


def _mark_interrupted(history: History, state: RunState) -> None:
    history.status = "interrupted"
    history.message = (f"interrupted after step {state.step} (epoch {state.epoch + 1}); "
                       f"the model holds the weights after step {state.step}")


def _keep_last_good(model: torch.nn.Module, last_good: dict[str, torch.Tensor]) -> None:
    """The weights that produced a non-finite loss may themselves be broken: fall back to the epoch start."""
    if all(torch.isfinite(p).all() for p in model.parameters()):
        return
    model.load_state_dict(last_good)
