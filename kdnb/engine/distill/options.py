"""The options of `distill`: defaults per method and one-line errors for bad values."""
from __future__ import annotations

from typing import Any

import torch

from kdnb.engine.errors import KdnbError, suggest

METHODS = ("kd", "fitnets", "at", "dkd")
FEATURE_METHODS = ("fitnets", "at")
CACHE_CHOICES = ("auto", True, False, "fp16")

# (alpha, beta) when left None. kd/fitnets/at: alpha weights the hard-label CE, 1 - alpha the soft
# term, beta the feature term; dkd: alpha weights TCKD and beta NCKD (Zhao et al. 2022's CIFAR values).
DEFAULT_WEIGHTS = {"kd": (0.5, 0.0), "fitnets": (0.5, 1.0), "at": (0.5, 1.0), "dkd": (1.0, 8.0)}


def check_method(method: Any) -> str:
    if method not in METHODS:
        raise KdnbError(f"unknown method {method!r}; {suggest(str(method), METHODS)} (known: {', '.join(METHODS)})")
    return method


def weights(method: str, alpha: float | None, beta: float | None) -> tuple[float, float]:
    """``alpha`` and ``beta`` with the method's defaults filled in."""
    default_alpha, default_beta = DEFAULT_WEIGHTS[method]
    return (default_alpha if alpha is None else alpha), (default_beta if beta is None else beta)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def check_weights(method: str, temperature: Any, alpha: Any, beta: Any) -> None:
    if not _number(temperature) or temperature <= 0:
        raise KdnbError(f"temperature should be a number > 0 (soft labels are softmax(logits / T)), "
                        f"got {temperature!r}")
    if method == "dkd":
        for name, value in (("alpha", alpha), ("beta", beta)):
            if not _number(value) or value < 0:
                raise KdnbError(f"{name} should be a weight >= 0 for method='dkd' (alpha: TCKD, beta: NCKD), "
                                f"got {value!r}")
        return
    if not _number(alpha) or not 0 <= alpha <= 1:
        raise KdnbError(f"alpha should be between 0 and 1 (the weight of the hard-label CE; 1 - alpha weights "
                        f"the soft labels), got {alpha!r}")
    if not _number(beta) or beta < 0:
        raise KdnbError(f"beta should be a weight >= 0 (of the feature term), got {beta!r}")


def check_cache(cache: Any) -> Any:
    if not any(cache is choice or (isinstance(cache, str) and cache == choice) for choice in CACHE_CHOICES):
        raise KdnbError(f"cache should be 'auto', True, False or 'fp16' (cached in float16), got {cache!r}")
    return cache


def check_models(teacher: Any, student: Any) -> None:
    for what, model in (("teacher", teacher), ("student", student)):
        if not isinstance(model, torch.nn.Module):
            raise KdnbError(f"{what} should be a torch.nn.Module, got {type(model).__name__}")
    if student is teacher:
        raise KdnbError("student is the teacher object itself; pass a separate (usually smaller) model as student")


def check_optimizer(optimizer: Any) -> None:
    """An optimizer instance is bound to the user's parameters, but kdnb trains copies: ask for a factory."""
    if isinstance(optimizer, torch.optim.Optimizer):
        raise KdnbError("distill trains a copy of the student, so optimizer should be a factory, e.g. "
                        "optimizer=lambda params: torch.optim.SGD(params, lr=0.1), not an optimizer instance")


def check_features(method: str, features: Any) -> None:
    if features is not None and method not in FEATURE_METHODS:
        raise KdnbError(f"features= is used by method 'fitnets' or 'at', not {method!r}; drop it or change method")


def check_warmup(warmup: Any) -> None:
    if warmup is not None and (isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1):
        raise KdnbError(f"warmup should be a number of epochs >= 1 (DKD's linear ramp), got {warmup!r}")
