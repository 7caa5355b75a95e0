"""`distill`: train a small student to imitate a frozen teacher, and beside it the fair baselines (the
same student from scratch, and with the teacher's hard top-1 labels), so the result answers "did
distillation help?" and "did the *soft* labels help?".

Named steps: check (every argument, once, before any state changes) -> prepare (copies, the first
batch, adapters, the loader with transfer set and soft-label cache) -> run (the distillation) ->
baselines (scratch, pseudo-labels: the same steps, optimizer, schedule and augmentation) -> finish.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdnb.engine import batches, checks
from kdnb.engine.device import resolve_device, to_device
from kdnb.engine.distill import augment as augmentations
from kdnb.engine.distill import cache as soft_cache
from kdnb.engine.distill import hooks, losses, methods, options
from kdnb.engine.distill.agreement import Agreement
from kdnb.engine.distill.objectives import Distillation, FrozenTeacher
from kdnb.engine.distill.result import DistillResult, SeedRun
from kdnb.engine.distill.transfer import with_transfer
from kdnb.errors import KdnbError
from kdnb.engine.evaluate import eval_mode
from kdnb.engine.history import History
from kdnb.engine.distill.options import DistillOptions
from kdnb.engine.loop import OptimizerSpec, Settings, fit
from kdnb.engine import measure


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
    baseline: bool | str | tuple[str, ...] = False,
    cache: bool | str = "auto",
    transfer: Any = None,
    features: Any = None,
    warmup: int | None = None,
    augment: Any = None,
    mixup: float = 0.0,
    seeds: Iterable[int] | None = None,
    optimizer: OptimizerSpec = None,
    lr: float = 1e-3,
    scheduler: str | Callable[[torch.optim.Optimizer], Any] | None = None,
    amp: bool = False,
    grad_clip: float | None = None,
    device: str | torch.device = "auto",
    seed: int | None = 0,
    callbacks: Iterable[object] = (),
) -> DistillResult:
    """Distil ``teacher`` into a copy of ``student`` and return a `DistillResult`.

    The user's ``teacher`` and ``student`` stay exactly as they are: kdnb trains a deep copy of the
    student and uses a frozen copy of the teacher in eval mode (warning if it came in training mode).

    Args:
        teacher: trained ``nn.Module`` mapping inputs to logits (N, C); never trained here.
        student: ``nn.Module`` with the same C outputs, usually much smaller; its current weights
            are the starting point of the distilled student and of every baseline.
        data: training ``DataLoader`` of ``(inputs, labels)``.
        val: validation loader; each epoch logs val loss, accuracy and top-1 agreement with the teacher.
        method: a name of the registry `kdnb.engine.distill.methods`: "kd" (Hinton et al. 2015),
            "fitnets" (Romero et al. 2015), "cosine" (DistilBERT's cosine on hidden states, Sanh et al. 2019),
            "at" (Zagoruyko & Komodakis 2017), "dkd" (Zhao et al. 2022), or one registered with
            `kdnb.register_method`; formulas in `kdnb.engine.distill.losses`.
        temperature: T of the soft labels softmax(logits / T); higher T shows more of how classes relate.
        alpha: kd/fitnets/cosine/at: weight of the hard-label CE, 1 - alpha weighs the soft term
            (default 0.5); dkd: weight of TCKD (default 1.0).
        beta: fitnets/cosine/at: weight of the feature term (default 1.0); dkd: weight of NCKD (default 8.0).
        epochs: passes over the training set (data, plus the transfer set if any): the budget.
        baseline: True or "scratch": also train the same student from the same initial weights on
            hard labels only, with the same optimizer, lr, schedule, seed, augmentation and number
            of optimizer steps (on ``data`` alone: a transfer set has no labels, so with one it runs
            more epochs). "pseudo": the student trained like the distilled one but on the teacher's
            top-1 class instead of its soft labels (`losses.pseudo_label`). ("scratch", "pseudo"): both.
        cache: "auto" caches the teacher's logits once per sample unless the data is randomly
            augmented; True forces it (warning if the labels go stale), "fp16" forces it in float16,
            False always runs the teacher live. With ``augment``/``mixup`` the teacher always runs live.
        transfer: extra unlabelled inputs (a DataLoader, e.g. `kdnb.datasets.transfer_set`, or a
            tensor) that the teacher labels; shuffled in with ``data``, where their label is -1 and
            only the soft term (not CE) sees them; DKD takes the teacher's top-1 class as their target.
        features: fitnets/cosine/at: ``[(teacher_layer, student_layer), ...]`` module names (as in
            ``model.named_modules()``) whose outputs are matched; tapped with forward hooks.
        warmup: dkd: epochs of the linear ramp of the DKD term (default: a tenth of ``epochs``, >= 1).
        augment: consistent teaching (Beyer et al. 2022): "digits", "mnist1d" (built-in
            augmentations of `kdnb.engine.distill.augment`) or any callable ``inputs -> inputs`` of
            the same shape; each step the teacher and the student see the same random view.
        mixup: Beta(a, a) concentration of mixup (Zhang et al. 2018), e.g. 0.4; 0 is off. The KD
            target is the teacher's output on the mixed input.
        seeds: run once per seed (the first seed's models are returned) and report the spread of
            the gap closure, flagging a gain within noise; overrides ``seed``.
        optimizer: None (Adam with ``lr``) or a factory ``params -> optimizer`` (not an instance).
        lr, amp, grad_clip, device, seed: as in `kdnb.train`.
        scheduler: as in `kdnb.train`, or "cosine": cosine learning rate over each run's epochs
            (the patient schedule of Beyer et al.).
        callbacks: subscribers to the events of each run, titled "distill", "scratch" and "pseudo".

    Returns:
        DistillResult: ``.student``, ``.history`` (per-step terms "loss", "ce", "kd"...; per-epoch
        "val_acc", "val_agreement"...), ``.baseline`` and ``.baseline_history`` (the scratch
        student), ``.baselines`` (every baseline by name), ``.summary()`` (teacher / baselines /
        distilled side by side, gap closure, the budget) and ``.plot()``.
    """
    opts = options.parse(teacher, student, data, val, method=method, temperature=temperature, alpha=alpha, beta=beta,
                         epochs=epochs, baseline=baseline, cache=cache, transfer=transfer, features=features,
                         warmup=warmup, augment=augment, mixup=mixup, seeds=seeds,
                         settings=Settings(optimizer=optimizer, lr=lr, scheduler=scheduler, amp=amp,
                                           grad_clip=grad_clip, device=device, seed=seed, callbacks=callbacks))
    runs = _seed_runs(teacher, student, data, val, opts, opts.seeds or (seed,))
    result = runs[0]
    if opts.seeds is not None:
        result.seed_runs = [SeedRun.of(s, run) for s, run in zip(opts.seeds, runs) if _complete(run)]
        if len(runs) < len(opts.seeds) or not _complete(runs[-1]):
            at = opts.seeds[len(runs) - 1] if not _complete(runs[-1]) else opts.seeds[len(runs)]
            result.stopped = (f"stopped by the stop button at seed {at}: the spread is over "
                              f"{len(result.seed_runs)} of {len(opts.seeds)} seeds")
    return result


def _complete(result: DistillResult) -> bool:
    """The distillation and every baseline ran to the end."""
    return all(h.status != "interrupted" for h in [result.history, *result.baseline_histories.values()])


def _seed_runs(teacher: nn.Module, student: nn.Module, data: Iterable, val: Iterable | None, opts: DistillOptions,
               seeds: Iterable[int | None]) -> list[DistillResult]:
    """One result per seed, until the stop button: an interrupted seed ends the list (it returns what it has);
    before the first seed has anything, the interrupt is one clean line (teacher and student are never touched)."""
    runs: list[DistillResult] = []
    for seed in seeds:
        try:
            runs.append(_one_seed(teacher, student, data, val, opts, seed))
        except KeyboardInterrupt:
            if not runs:
                raise KeyboardInterrupt("distill was interrupted while preparing (first-batch checks, feature taps, "
                                        "soft-label cache); nothing was trained, teacher and student are as "
                                        "given") from None
            break
        if not _complete(runs[-1]):
            break
    return runs


@dataclass
class _Plan:
    """What `_prepare` built for one seed: the frozen teacher, the student's copies, the loader."""

    frozen: FrozenTeacher
    initial: nn.Module  # the student's initial weights, before any training: every baseline starts here
    trained: nn.Module
    loader: Iterable
    cached: bool
    soft_labels: str
    adapters: nn.ModuleList | None
    agreement: Agreement | None


def _prepare(teacher: nn.Module, student: nn.Module, data: Iterable, val: Iterable | None, opts: DistillOptions,
             seed: int | None) -> _Plan:
    """Copies, the first-batch checks (models, labels, augmentation), adapters, transfer set and cache."""
    device = opts.device
    frozen = FrozenTeacher(teacher, device)
    initial, trained = copy.deepcopy(student), copy.deepcopy(student).to(device)
    batch = to_device(checks.first_batch(data, "data"), device)
    num_classes, per_token = _check_pair(frozen.model, trained, batch, device)
    checks.check_labels_in_range(data, num_classes)
    if val is not None:
        checks.check_data_fits(trained, val, "val")
    single = _single_input(batch, opts)
    if opts.transfer is not None:
        options.check_transfer_fits(opts.transfer, single)
    if opts.augment is not None:
        augmentations.check(opts.augment, single)
    if seed is not None:
        torch.manual_seed(seed)  # the adapters' initial weights
    example = batches.as_example(*batches.first_rows(*checks.check_batch(batch)[:2], 2))
    adapters = hooks.plan_features(frozen.model, trained, example, opts.pairs, opts.method) if opts.pairs else None
    loader = with_transfer(data, opts.transfer) if opts.transfer is not None else data
    cached, how = _soft_labels(opts, frozen, loader, data, single is not None and not per_token)
    if cached:
        dtype = torch.float16 if opts.cache == "fp16" else torch.float32
        logits = soft_cache.teacher_logits(frozen, loader.dataset, loader.batch_size or 64, device, dtype)
        loader = soft_cache.cached_loader(loader, logits)
    agreement = Agreement(frozen, val) if val is not None else None
    return _Plan(frozen, initial, trained, loader, cached, how, adapters, agreement)


def _single_input(batch: Any, opts: DistillOptions) -> torch.Tensor | None:
    """The one input tensor of an (inputs, labels) batch, else None; a transfer set, augment and mixup need one
    (they make and mix input tensors), so with them another batch is a one-line error."""
    args, kwargs, _ = checks.check_batch(batch, "data")
    if len(args) == 1 and not kwargs:
        return args[0]
    needs = [name for name, given in (("transfer", opts.transfer is not None), ("augment", opts.augment is not None),
                                      ("mixup", bool(opts.mixup))) if given]
    if needs:
        raise KdnbError(f"{needs[0]}= needs batches of (inputs, labels) with one input tensor, but data's batches "
                        f"hold {batches.describe(args, kwargs)}; pass {needs[0]}=None")
    return None


def _soft_labels(opts: DistillOptions, frozen: FrozenTeacher, loader: Iterable, data: Iterable,
                 single: bool) -> tuple[bool, str]:
    """Whether to cache the teacher's logits (``single``: the batches are (inputs, labels) of one tensor and
    the logits one row per sample), and where the soft labels come from, in words."""
    drawn = augmentations.describe(opts.augment, opts.mixup)
    if drawn is not None:  # each step is a new view: the teacher labels it live (consistent teaching)
        return False, f"live teacher (consistent teaching: {drawn})"
    augmented = soft_cache.augmentation(data) or (
        soft_cache.augmentation(opts.transfer) if opts.transfer is not None else None)
    return soft_cache.decide(opts.cache, loader, augmented, features=bool(opts.pairs), single=single)


def _one_seed(teacher: nn.Module, student: nn.Module, data: Iterable, val: Iterable | None, opts: DistillOptions,
              seed: int | None) -> DistillResult:
    plan = _prepare(teacher, student, data, val, opts, seed)
    history = _run(plan, opts, val, seed)
    baselines = _baselines(plan, opts, data, val, seed) if history.status == "completed" else {}
    return _finish(plan, opts, teacher, data, val, history, baselines)


def _train(model: nn.Module, loader: Iterable, val: Iterable | None, objective: Distillation | None,
           epochs: int, title: str, plan: _Plan, opts: DistillOptions, seed: int | None) -> History:
    """One run of the loop with the shared training settings ("cosine" spans this run's epochs)."""
    settings = opts.settings
    callbacks = [objective, *settings.callbacks] if objective is not None else list(settings.callbacks)
    try:
        return fit(model, loader, val, objective=objective, callbacks=callbacks, title=title, epochs=epochs,
                   seed=seed, evaluate_fn=plan.agreement, check_inputs=objective is None,
                   optimizer=settings.optimizer, lr=settings.lr, scheduler=settings.scheduler, amp=settings.amp,
                   grad_clip=settings.grad_clip, device=opts.device)
    finally:
        if objective is not None:
            objective.close()


def _objective(plan: _Plan, opts: DistillOptions, method: str, alpha: float, *, cached: bool,
               unlabelled: bool) -> Distillation:
    features = {}
    if methods.get(method).needs_features:  # only the distillation itself matches features
        features = {"pairs": opts.pairs, "adapters": plan.adapters,
                    "student_tap": hooks.Tap(plan.trained, [s for _, s in opts.pairs]),
                    "teacher_tap": hooks.Tap(plan.frozen.model, [t for t, _ in opts.pairs])}
    return Distillation(plan.frozen, method, opts.temperature, alpha, opts.beta, cached=cached,
                        unlabelled=unlabelled, warmup=opts.warmup, augment=opts.augment, mixup=opts.mixup,
                        **features)


def _run(plan: _Plan, opts: DistillOptions, val: Iterable | None, seed: int | None) -> History:
    objective = _objective(plan, opts, opts.method, opts.alpha, cached=plan.cached,
                           unlabelled=opts.transfer is not None)
    return _train(plan.trained, plan.loader, val, objective, opts.epochs, "distill", plan, opts, seed)


def _baselines(plan: _Plan, opts: DistillOptions, data: Iterable, val: Iterable | None, seed: int | None
               ) -> dict[str, tuple[nn.Module, History]]:
    """The fair baselines, each from the student's initial weights, with the distillation's budget.

    scratch: hard labels on ``data`` (as many steps: more epochs when a transfer set lengthened the
    distillation), the same augmentation; without augmentation it is exactly `kdnb.train`.
    pseudo: the distillation's loader and epochs, the teacher's top-1 class for its soft labels.
    """
    done = {}
    for name in opts.baselines:
        model = copy.deepcopy(plan.initial).to(opts.device)
        if name == "scratch":
            drawn = opts.augment is not None or bool(opts.mixup)
            objective = _objective(plan, opts, "scratch", 1.0, cached=False, unlabelled=False) if drawn else None
            epochs = _same_steps(opts.epochs, plan.loader, data)
            history = _train(model, data, val, objective, epochs, "scratch", plan, opts, seed)
        else:
            # The pseudo-label student weighs its hard-label CE as KD does (alpha), if the method has one.
            alpha = opts.alpha if methods.get(opts.method).formula is losses.kd else methods.get("pseudo").alpha
            objective = _objective(plan, opts, "pseudo", alpha, cached=plan.cached, unlabelled=opts.transfer is not None)
            history = _train(model, plan.loader, val, objective, opts.epochs, "pseudo", plan, opts, seed)
        done[name] = (model, history)
        if history.status == "interrupted":  # the stop button ends the baselines too
            break
    return done


def _finish(plan: _Plan, opts: DistillOptions, teacher: nn.Module, data: Iterable, val: Iterable | None,
            history: History, baselines: dict[str, tuple[nn.Module, History]]) -> DistillResult:
    scratch = baselines.get("scratch")
    settings = {"temperature": opts.temperature, "alpha": opts.alpha, "beta": opts.beta, "epochs": opts.epochs,
                "baseline_epochs": _same_steps(opts.epochs, plan.loader, data), "steps": history.num_steps,
                "scheduler": _schedule_name(opts.settings.scheduler),
                "augment": augmentations.describe(opts.augment, opts.mixup), "baselines": opts.baselines}
    return DistillResult(
        student=plan.trained, history=history, teacher=teacher, baseline=scratch[0] if scratch else None,
        baseline_history=scratch[1] if scratch else None, method=opts.method, settings=settings,
        soft_labels=plan.soft_labels, teacher_accuracy=plan.agreement.teacher_accuracy if plan.agreement else None,
        val=val, data=data, baselines={name: model for name, (model, _) in baselines.items()},
        baseline_histories={name: run for name, (_, run) in baselines.items()}, measure_with=measure.compare)


def _schedule_name(scheduler: Any) -> str:
    if scheduler is None:
        return "constant lr"
    return "cosine lr" if scheduler == "cosine" else "the given lr schedule"


def _same_steps(epochs: int, loader: Iterable, data: Iterable) -> int:
    """Epochs over ``data`` alone that take as many optimizer steps as ``epochs`` over ``loader``
    (more when a transfer set made ``loader`` longer); ``epochs`` when a loader has no length."""
    try:
        return max(1, round(epochs * len(loader) / len(data)))  # type: ignore[arg-type]
    except TypeError:
        return epochs


def _check_pair(teacher: nn.Module, student: nn.Module, batch: Any, device: torch.device) -> tuple[int, bool]:
    """Both models run on the first batch and output logits of the same shape; returns (classes, whether the
    logits are per token)."""
    args, kwargs, y = checks.check_batch(batch, "data")
    if y is None:
        if isinstance(batch, Mapping):
            checks.check_labelled(batch, y, "data", "distillation's hard-label term")
        raise KdnbError("data should yield (inputs, labels) batches; pass unlabelled inputs as transfer= instead")
    classes = checks.check_model_fits_data(teacher, batch, device, what="teacher")
    with eval_mode(student), torch.no_grad():  # sizes first, then labels
        logits = checks.logits_of(student, args, kwargs, "student")
    with eval_mode(teacher), torch.no_grad():
        teacher_shape = checks.logits_of(teacher, args, kwargs, "teacher").shape
    if logits.shape[-1] != classes:
        raise KdnbError(f"teacher outputs {classes} classes but student outputs {logits.shape[-1]}; "
                        f"give the student's last layer {classes} outputs")
    if logits.shape != teacher_shape:
        raise KdnbError(f"teacher's logits are {tuple(teacher_shape)} but student's {tuple(logits.shape)} on the same "
                        "batch; the student should output one row of logits per sample (or per token) as the teacher")
    return classes, logits.dim() > 2
