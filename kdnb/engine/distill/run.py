"""`distill`: train a small student to imitate a frozen teacher, and optionally the same student from
scratch beside it, so the result answers "did distillation help?"."""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from kdnb.engine import checks
from kdnb.engine.device import resolve_device, to_device
from kdnb.engine.distill import cache as soft_cache
from kdnb.engine.distill import hooks, options
from kdnb.engine.distill.agreement import Agreement
from kdnb.engine.distill.objectives import Distillation, FrozenTeacher
from kdnb.engine.distill.result import DistillResult
from kdnb.engine.distill.transfer import with_transfer
from kdnb.engine.errors import KdnbError
from kdnb.engine.loop import OptimizerSpec, fit
from kdnb.engine.objective import split_batch


def distill(
    teacher: nn.Module,
    student: nn.Module,
    data: Iterable,
    val: Iterable | None = None,
    *,
    method: str = "kd",
    temperature: float = 4.0,
    alpha: float | None = None,
    beta: float | None = None,
    epochs: int = 5,
    baseline: bool = False,
    cache: bool | str = "auto",
    transfer: Any = None,
    features: Any = None,
    warmup: int | None = None,
    optimizer: OptimizerSpec = None,
    lr: float = 1e-3,
    device: str | torch.device = "auto",
    amp: bool = False,
    seed: int | None = 0,
    callbacks: Iterable[object] = (),
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    grad_clip: float | None = None,
) -> DistillResult:
    """Distil ``teacher`` into a copy of ``student`` and return a `DistillResult`.

    The user's ``teacher`` and ``student`` stay exactly as they are: kdnb trains a deep copy of the
    student and uses a frozen copy of the teacher in eval mode (warning if it came in training mode).

    Args:
        teacher: trained ``nn.Module`` mapping inputs to logits (N, C); never trained here.
        student: ``nn.Module`` with the same C outputs, usually much smaller; its current weights
            are the starting point of both the distilled and the scratch student.
        data: training ``DataLoader`` of ``(inputs, labels)``.
        val: validation loader; each epoch logs val loss, accuracy and top-1 agreement with the teacher.
        method: "kd" (Hinton et al. 2015), "fitnets" (Romero et al. 2015), "at" (Zagoruyko &
            Komodakis 2017) or "dkd" (Zhao et al. 2022); formulas in `kdnb.engine.distill.losses`.
        temperature: T of the soft labels softmax(logits / T); higher T shows more of how classes relate.
        alpha: kd/fitnets/at: weight of the hard-label CE, 1 - alpha weighs the soft term
            (default 0.5); dkd: weight of TCKD (default 1.0).
        beta: fitnets/at: weight of the feature term (default 1.0); dkd: weight of NCKD (default 8.0).
        epochs: passes over the training set (data, plus the transfer set if any).
        baseline: also train the same student from the same initial weights with hard labels only,
            with the same optimizer, lr, seed and number of optimizer steps: on ``data`` alone (a
            transfer set has no labels), so with a transfer set it runs more epochs.
        cache: "auto" caches the teacher's logits once per sample unless the data is randomly
            augmented; True forces it (warning if the labels go stale), "fp16" forces it in float16,
            False always runs the teacher live.
        transfer: extra unlabelled inputs (a DataLoader, e.g. `kdnb.datasets.transfer_set`, or a
            tensor) that the teacher labels; shuffled in with ``data``, where their label is -1 and
            only the soft term (not CE) sees them.
        features: fitnets/at: ``[(teacher_layer, student_layer), ...]`` module names (as in
            ``model.named_modules()``) whose outputs are matched; tapped with forward hooks.
        warmup: dkd: epochs of the linear ramp of the DKD term (default: a tenth of ``epochs``, >= 1).
        optimizer: None (Adam with ``lr``) or a factory ``params -> optimizer`` (not an instance).
        lr, device, amp, seed, scheduler, grad_clip: as in `kdnb.train`.
        callbacks: subscribers to the events of each run, titled "distill" and "scratch".

    Returns:
        DistillResult: ``.student``, ``.history`` (per-step terms "loss", "ce", "kd"...; per-epoch
        "val_acc", "val_agreement"...), ``.baseline`` and ``.baseline_history`` (with baseline=True),
        ``.summary()`` (teacher / scratch / distilled side by side, gap closure) and ``.plot()``.
    """
    options.check_models(teacher, student)
    method = options.check_method(method)
    alpha, beta = options.weights(method, alpha, beta)
    options.check_weights(method, temperature, alpha, beta)
    options.check_cache(cache)
    options.check_features(method, features)
    options.check_warmup(warmup)
    options.check_optimizer(optimizer)
    checks.check_positive("epochs", epochs, integer=True)
    checks.check_loader(data, "data")
    if val is not None:
        checks.check_loader(val, "val")
    pairs = hooks.check_names(features, method) if method in options.FEATURE_METHODS else []
    if method == "dkd" and transfer is not None:
        raise KdnbError("method='dkd' needs a label for every sample but a transfer set has none; "
                        "use method='kd' with transfer=")
    device = resolve_device(device)

    frozen = FrozenTeacher(teacher, device)
    scratch = copy.deepcopy(student) if baseline else None  # the same initial weights, before any training
    trained = copy.deepcopy(student).to(device)
    batch = to_device(checks.first_batch(data, "data"), device)
    num_classes = _check_pair(frozen.model, trained, batch, device)
    checks.check_labels_in_range(data, num_classes)

    if seed is not None:
        torch.manual_seed(seed)  # the adapters' initial weights
    adapters = hooks.plan_features(frozen.model, trained, split_batch(batch)[0][:2], pairs, method) if pairs else None
    loader = with_transfer(data, transfer) if transfer is not None else data
    augmented = soft_cache.augmentation(data) or (soft_cache.augmentation(transfer) if transfer is not None else None)
    cached, how = soft_cache.decide(cache, loader, augmented, features=bool(pairs))
    if cached:
        dtype = torch.float16 if cache == "fp16" else torch.float32
        logits = soft_cache.teacher_logits(frozen, loader.dataset, loader.batch_size or 64, device, dtype)
        loader = soft_cache.cached_loader(loader, logits)

    objective = Distillation(
        frozen, method, temperature, alpha, beta, cached=cached, unlabelled=transfer is not None,
        warmup=warmup or max(1, epochs // 10), pairs=pairs, adapters=adapters,
        student_tap=hooks.Tap(trained, [s for _, s in pairs]) if pairs else None,
        teacher_tap=hooks.Tap(frozen.model, [t for t, _ in pairs]) if pairs else None)
    agreement = Agreement(frozen, val) if val is not None else None
    common = dict(epochs=epochs, optimizer=optimizer, lr=lr, device=device, amp=amp, seed=seed,
                  scheduler=scheduler, grad_clip=grad_clip, evaluate_fn=agreement)
    try:
        history = fit(trained, loader, val, objective=objective, callbacks=[objective, *callbacks],
                      title="distill", check_inputs=False, **common)
    finally:
        objective.close()
    baseline_history, baseline_epochs = None, _same_steps(epochs, loader, data)
    if scratch is not None and history.status == "completed":
        common["epochs"] = baseline_epochs
        baseline_history = fit(scratch, data, val, callbacks=callbacks, title="scratch", **common)

    return DistillResult(
        student=trained, history=history, teacher=teacher, baseline=scratch if baseline_history else None,
        baseline_history=baseline_history, method=method,
        settings={"temperature": temperature, "alpha": alpha, "beta": beta, "epochs": epochs,
                  "baseline_epochs": baseline_epochs},
        soft_labels=how, teacher_accuracy=agreement.teacher_accuracy if agreement else None,
        val=val, data=data)


def _same_steps(epochs: int, loader: Iterable, data: Iterable) -> int:
    """Epochs over ``data`` alone that take as many optimizer steps as ``epochs`` over ``loader``
    (more when a transfer set made ``loader`` longer); ``epochs`` when a loader has no length."""
    try:
        return max(1, round(epochs * len(loader) / len(data)))  # type: ignore[arg-type]
    except TypeError:
        return epochs


def _check_pair(teacher: nn.Module, student: nn.Module, batch: Any, device: torch.device) -> int:
    """Both models run on the first batch and output the same number of classes; returns it."""
    x, y = split_batch(batch)
    if y is None:
        raise KdnbError("data should yield (inputs, labels) batches; pass unlabelled inputs as transfer= instead")
    classes = checks.check_model_fits_data(teacher, batch, device, what="teacher")
    student_classes = checks.check_model_fits_data(student, (x,), device, what="student")  # sizes first, then labels
    if student_classes != classes:
        raise KdnbError(f"teacher outputs {classes} classes but student outputs {student_classes}; "
                        f"give the student's last layer {classes} outputs")
    return classes
