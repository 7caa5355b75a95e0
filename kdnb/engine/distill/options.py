"""The options of `distill`, parsed once into a frozen `DistillOptions` (defaults per method filled in,
one-line errors for bad values) that the run trusts."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from kdnb.engine.distill import augment as augmentations
from kdnb.engine.distill import hooks, methods
from kdnb.engine import checks
from kdnb.engine.checks import shown
from kdnb.engine.device import resolve_device
from kdnb.engine.loop import Settings
from kdnb.errors import KdnbError, is_integer, suggest

CACHE_CHOICES = ("auto", True, False, "fp16")
BASELINES = ("scratch", "pseudo")


@dataclass(frozen=True)
class DistillOptions:
    """Every argument of `distill` but the models and loaders, checked, with each default resolved: the
    method's alpha and beta, the feature pairs, DKD's warmup, the augmentation as a callable, the device."""

    method: str
    temperature: float
    alpha: float
    beta: float
    epochs: int
    baselines: tuple[str, ...]  # ("scratch",), ("pseudo",), both or ()
    cache: bool | str
    transfer: Any  # None, a tensor or a loader of extra inputs
    pairs: tuple[tuple[str, str], ...]  # (teacher layer, student layer) whose outputs are matched
    warmup: int
    augment: augmentations.Augmentation | None
    mixup: float
    seeds: tuple[int, ...] | None
    settings: Settings  # the training settings every run shares (its seed is the first run's)
    device: torch.device


def parse(teacher: Any, student: Any, data: Any, val: Any, *, method: Any, temperature: Any, alpha: Any, beta: Any,
          epochs: Any, baseline: Any, cache: Any, transfer: Any, features: Any, warmup: Any, augment: Any,
          mixup: Any, seeds: Any, settings: Settings) -> DistillOptions:
    """Check every argument of `distill` once, before anything is copied or trained (``settings`` checked
    itself when it was made), and resolve every default."""
    check_models(teacher, student)
    method = check_method(method)
    alpha, beta = weights(method, alpha, beta)
    check_weights(method, temperature, alpha, beta)
    check_cache(cache)
    check_features(method, features)
    check_warmup(warmup)
    check_optimizer(settings.optimizer)
    check_mixup(mixup, method)
    augment = check_augment(augment)
    check_cache_with_augment(cache, augment is not None or bool(mixup))
    checks.check_positive("epochs", epochs, integer=True)
    checks.check_loader(data, "data")
    if val is not None:
        checks.check_loader(val, "val")
    check_transfer(transfer)
    pairs = hooks.check_names(features, method) if methods.get(method).needs_features else []
    return DistillOptions(method, float(temperature), alpha, beta, epochs, check_baseline(baseline), cache, transfer,
                          tuple(map(tuple, pairs)), warmup or max(1, epochs // 10), augment, mixup,
                          check_seeds(seeds), settings, resolve_device(settings.device))


def check_method(method: Any) -> str:
    """A ``method=`` of the registry (`methods.names()`)."""
    if method not in methods.names():
        known = methods.names()
        raise KdnbError(f"unknown method {method!r}; {suggest(str(method), known)} (known: {', '.join(known)})")
    return method


def weights(method: str, alpha: float | None, beta: float | None) -> tuple[float, float]:
    """``alpha`` and ``beta`` with the method's defaults (its registry record) filled in."""
    spec = methods.get(method)
    return (spec.alpha if alpha is None else alpha), (spec.beta if beta is None else beta)


def _number(value: Any) -> bool:
    """A finite real number (not a bool, a string, NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_weights(method: str, temperature: Any, alpha: Any, beta: Any) -> None:
    checks.check_temperature(temperature)
    if method == "dkd":
        for name, value in (("alpha", alpha), ("beta", beta)):
            if not _number(value) or value < 0:
                raise KdnbError(f"{name} should be a weight >= 0 for method='dkd' (alpha: TCKD, beta: NCKD), "
                                f"got {shown(value)}; pass e.g. {name}={1.0 if name == 'alpha' else 8.0}")
        return
    if not _number(alpha) or not 0 <= alpha <= 1:
        raise KdnbError(f"alpha should be between 0 and 1 (the weight of the hard-label CE; 1 - alpha weights "
                        f"the soft labels), got {shown(alpha)}; pass e.g. alpha=0.5")
    if not _number(beta) or beta < 0:
        raise KdnbError(f"beta should be a weight >= 0 (of the feature term), got {shown(beta)}; pass e.g. beta=1.0")


def check_cache(cache: Any) -> Any:
    if not any(cache is choice or (isinstance(cache, str) and cache == choice) for choice in CACHE_CHOICES):
        raise KdnbError(f"cache should be 'auto', True, False or 'fp16' (cached in float16), got {shown(cache)}; "
                        "pass cache='auto'")
    return cache


def check_models(teacher: Any, student: Any) -> None:
    for what, model in (("teacher", teacher), ("student", student)):
        checks.check_model(model, what)
    if student is teacher:
        raise KdnbError("student is the teacher object itself; pass a separate (usually smaller) model as student")


def check_optimizer(optimizer: Any) -> None:
    """An optimizer instance is bound to the user's parameters, but kdnb trains copies: ask for a factory."""
    if isinstance(optimizer, torch.optim.Optimizer):
        raise KdnbError("distill trains a copy of the student, so optimizer should be a factory: pass e.g. "
                        "optimizer=lambda params: torch.optim.SGD(params, lr=0.1), not an optimizer instance")


def check_features(method: str, features: Any) -> None:
    if features is not None and not methods.get(method).needs_features:
        users = " or ".join(repr(m.name) for m in methods.METHODS.values() if m.needs_features)
        raise KdnbError(f"features= is used by method {users}, not {method!r}; drop it or change method")


def check_warmup(warmup: Any) -> None:
    if warmup is not None and (isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1):
        raise KdnbError(f"warmup should be a number of epochs >= 1 (DKD's linear ramp), got {shown(warmup)}; "
                        "pass e.g. warmup=2 (or None: a tenth of epochs)")


def check_augment(augment: Any) -> augmentations.Augmentation | None:
    """``augment=`` resolved to a callable (a built-in name or the user's), or None."""
    return augmentations.resolve(augment)


def check_mixup(mixup: Any, method: str) -> None:
    if not _number(mixup) or mixup < 0:
        raise KdnbError(f"mixup should be the Beta(a, a) concentration a > 0 of mixup, or 0 for off; "
                        f"got {shown(mixup)}; pass e.g. mixup=0.4")
    if mixup and not methods.get(method).mixup:
        raise KdnbError(f"mixup does not go with method={method!r}: a mixed input has no single target class; "
                        "use method='kd' with mixup")


def check_cache_with_augment(cache: Any, augmented: bool) -> None:
    """A cached soft label belongs to one view of a sample; augment= draws a new view every step."""
    if augmented and cache is not False and cache != "auto":
        raise KdnbError(f"cache={cache!r} with augment=/mixup=: the teacher must label each new random view, so "
                        "the cache is off; drop cache= (or say cache=False)")


def check_baseline(baseline: Any) -> tuple[str, ...]:
    """``baseline=`` as the tuple of baselines to train: False/None -> (), True -> ("scratch",),
    "pseudo" -> ("pseudo",), ("scratch", "pseudo") -> both."""
    if baseline is None or baseline is False:
        return ()
    if baseline is True:
        return ("scratch",)
    chosen = (baseline,) if isinstance(baseline, str) else baseline
    if not isinstance(chosen, (tuple, list)) or not chosen or not all(b in BASELINES for b in chosen):
        raise KdnbError(f"baseline should be True, False, 'scratch', 'pseudo' or ('scratch', 'pseudo') (hard "
                        f"labels from scratch, or the teacher's top-1 class), got {shown(baseline)}; "
                        "pass baseline=True")
    return tuple(dict.fromkeys(chosen))


def check_seeds(seeds: Any) -> tuple[int, ...] | None:
    if seeds is None:
        return None
    ok = isinstance(seeds, (list, tuple, range)) and all(is_integer(s) and -(2**63) <= s < 2**63 for s in seeds)
    if not ok or len(seeds) == 0:
        raise KdnbError(f"seeds should be a non-empty list of integers, got {shown(seeds)}; pass e.g. seeds=range(5)")
    if len(set(seeds)) != len(seeds):
        raise KdnbError(f"seeds should be distinct (a repeated seed repeats the same run), got {shown(list(seeds))}; "
                        "pass each seed once, e.g. seeds=range(5)")
    return tuple(seeds)


def check_transfer(transfer: Any) -> None:
    """None, a tensor of extra inputs (batch first) or a loader of them; their shape is checked against the
    data's inputs once the first batch is drawn (`check_transfer_fits`)."""
    if transfer is None:
        return
    if isinstance(transfer, torch.Tensor):
        checks.check_example(transfer, "transfer")
        if transfer.dtype.is_floating_point and not bool(torch.isfinite(transfer).all()):
            raise KdnbError("transfer holds NaN or infinite inputs (the teacher's soft labels would be NaN); "
                            "remove those rows, e.g. transfer[torch.isfinite(transfer).flatten(1).all(1)]")
        return
    checks.check_loader(transfer, "transfer")


def check_transfer_fits(transfer: Any, x: torch.Tensor) -> None:
    """The transfer inputs have the shape (after the batch) and dtype of the data's inputs ``x``."""
    if isinstance(transfer, torch.Tensor):
        sample = transfer
    else:
        sample = checks.first_batch(transfer, "transfer")
        sample = sample if isinstance(sample, torch.Tensor) else checks.check_batch(sample, "transfer")[0][0]
    if sample.shape[1:] != x.shape[1:] or sample.dtype != x.dtype:
        raise KdnbError(f"transfer inputs are {tuple(sample.shape[1:])} {sample.dtype} per sample but data's are "
                        f"{tuple(x.shape[1:])} {x.dtype}; pass transfer inputs shaped like the data's")
