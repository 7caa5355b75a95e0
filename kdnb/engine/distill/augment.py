"""Consistent teaching (Beyer et al. 2022, "Knowledge distillation: A good teacher is patient and
consistent"): each step draws one random view of the batch, and the teacher and the student both
see that view, so the student matches the teacher's function on inputs the labels never covered.

An augmentation is any callable ``batch of inputs -> batch of the same shape``, applied on the
batch's device with torch's global random state (which the loop seeds, so a seeded run repeats).
Built in, for the embedded datasets (`kdnb.datasets`): `digits` (±1-pixel shifts, small rotations,
noise) and `mnist1d` (the MNIST-1D generator's own transforms: translation, scaling, shear, noise).
`mixup` (Zhang et al. 2018) mixes pairs of samples; with it the KD target is the teacher's output
on the mixed input itself.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from kdnb.errors import KdnbError, suggest
from kdnb.engine.distill.losses import Mix

Augmentation = Callable[[torch.Tensor], torch.Tensor]


class Standardised:
    """Undo the dataset's standardisation, transform the raw inputs, standardise again.

    ``load(name, seed)`` standardises each feature with its train split's mean and std (see
    `kdnb.datasets.statistics`); a pixel shift or a rotation only makes sense on the raw image. The
    result is clipped to the range each feature has in the train split: ink moved onto a border
    pixel that is blank in every training image would otherwise come out at (value - 0) / 1e-6.
    """

    def __init__(self, name: str, seed: int, transform: Callable[[torch.Tensor], torch.Tensor], noise: float = 0.0):
        from kdnb import datasets  # below the engine: the data's own statistics

        self.name, self.seed, self.transform, self.noise = name, seed, transform, noise
        self.mean, self.std = datasets.statistics(name, seed)
        x_train = datasets.arrays(name, seed)[0]
        self.low, self.high = x_train.min(dim=0).values, x_train.max(dim=0).values

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(len(x), -1)
        if flat.shape[1] != self.mean.numel():
            raise KdnbError(f"augment={self.name!r} is for {self.name} inputs of {self.mean.numel()} features, "
                            f"got inputs of shape {tuple(x.shape[1:])}; pass your own augment= callable")
        mean, std, low, high = (v.to(x.device, x.dtype) for v in (self.mean, self.std, self.low, self.high))
        moved = (self.transform(flat * std + mean) - mean) / std
        if self.noise:  # in standardised units: raw-unit noise would be huge on the near-constant border pixels
            moved = moved + self.noise * torch.randn_like(moved)
        return torch.minimum(torch.maximum(moved, low), high).reshape(x.shape)

    def __repr__(self) -> str:
        noise = f", noise {self.noise:g} std" if self.noise else ""
        return f"{self.name} augmentation ({self.transform!r}{noise})"


class DigitsTransform:
    """Random per-image shift by up to ``shift`` pixels (each axis, whole pixels) and rotation by up to
    ``degrees``, on raw 8x8 digits (0..16); `digits` adds the noise after standardising."""

    def __init__(self, shift: int = 1, degrees: float = 10.0):
        self.shift, self.degrees = shift, degrees

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        n, device = len(raw), raw.device
        images = raw.reshape(n, 1, 8, 8)
        angle = (torch.rand(n, device=device) * 2 - 1) * math.radians(self.degrees)
        shift = torch.randint(-self.shift, self.shift + 1, (n, 2), device=device).to(raw.dtype) * (2 / 8)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta.to(raw.dtype), list(images.shape), align_corners=False)
        moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return moved.reshape(n, -1)

    def __repr__(self) -> str:
        return f"shift ±{self.shift}px, rotate ±{self.degrees:g}°"


class Mnist1dTransform:
    """The MNIST-1D generator's transforms (`mnist1d.transform`), vectorised over a batch of final
    40-sample signals: translation (circular, up to ``shift`` samples either way), scaling by
    1 + ``scale`` * (u - 1/2) (the generator's ``scale_coeff``), shear: minus ``shear`` * (u - 1/2) *
    linspace(-1/2, 1/2) (its ``shear_scale``), and iid Gaussian noise of std ``noise``."""

    def __init__(self, shift: int = 4, scale: float = 0.4, shear: float = 0.75, noise: float = 0.05):
        self.shift, self.scale, self.shear, self.noise = shift, scale, shear, noise

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        n, length, device = raw.shape[0], raw.shape[1], raw.device
        steps = torch.randint(-self.shift, self.shift + 1, (n, 1), device=device)
        moved = raw.gather(1, (torch.arange(length, device=device) - steps) % length)
        scaled = moved * (1 + self.scale * (torch.rand(n, 1, device=device, dtype=raw.dtype) - 0.5))
        ramp = torch.linspace(-0.5, 0.5, length, device=device, dtype=raw.dtype)
        sheared = scaled - self.shear * (torch.rand(n, 1, device=device, dtype=raw.dtype) - 0.5) * ramp
        return sheared + self.noise * torch.randn_like(sheared)

    def __repr__(self) -> str:
        return f"shift ±{self.shift}, scale ±{self.scale / 2:g}, shear {self.shear:g}, noise {self.noise:g}"


def digits(shift: int = 1, degrees: float = 10.0, noise: float = 0.1, *, seed: int = 0) -> Standardised:
    """The augmentation of ``kdnb.datasets.load("digits", seed=seed)`` inputs (flat or (1, 8, 8)):
    shifts and rotations of the raw image, then Gaussian noise of ``noise`` standard deviations."""
    return Standardised("digits", seed, DigitsTransform(shift, degrees), noise)


def mnist1d(shift: int = 4, scale: float = 0.4, shear: float = 0.75, noise: float = 0.05, *,
            seed: int = 0) -> Standardised:
    """The augmentation of ``kdnb.datasets.load("mnist1d", seed=seed)`` inputs (flat or (1, 40))."""
    return Standardised("mnist1d", seed, Mnist1dTransform(shift, scale, shear, noise))


BUILT_IN: dict[str, Callable[[], Augmentation]] = {"digits": digits, "mnist1d": mnist1d}


def resolve(augment: Any) -> Augmentation | None:
    """``augment=`` as a callable: None, a built-in name ("digits", "mnist1d") or the user's callable."""
    if augment is None or callable(augment):
        return augment
    if isinstance(augment, str):
        if augment not in BUILT_IN:
            raise KdnbError(f"unknown augmentation {augment!r}; {suggest(augment, BUILT_IN)} "
                            "(or pass a callable: batch of inputs -> batch of the same shape)")
        return BUILT_IN[augment]()
    raise KdnbError(f"augment should be None, 'digits', 'mnist1d' or a callable (batch of inputs -> batch of "
                    f"the same shape), got {type(augment).__name__}; pass e.g. augment='digits'")


def describe(augment: Augmentation | None, mixup: float) -> str | None:
    """The augmentation in words for the result ("digits augmentation (...) + mixup(0.4)"), or None."""
    parts = [] if augment is None else [getattr(augment, "__name__", None) or repr(augment)]
    if mixup:
        parts.append(f"mixup (Beta({mixup:g}, {mixup:g}))")
    return " + ".join(parts) or None


def check(augment: Augmentation, x: torch.Tensor) -> None:
    """Run ``augment`` once on a batch (torch's random state put back after): it must return a
    finite tensor of the same shape and dtype, or the run would fail steps later."""
    try:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            out = augment(x.clone())
    except KdnbError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure of the user's callable becomes one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise KdnbError(f"augment failed on an input batch of shape {tuple(x.shape)}: {first}; check the function "
                        "(it takes one batch of inputs and returns the augmented batch)") from None
    if not isinstance(out, torch.Tensor):
        raise KdnbError(f"augment should return a tensor (the augmented batch), got {type(out).__name__}; make it "
                        "return a tensor of the input's shape")
    if out.shape != x.shape:
        raise KdnbError(f"augment changed the input shape from {tuple(x.shape)} to {tuple(out.shape)}; make it keep "
                        "the shape teacher and student were built for")
    if out.dtype != x.dtype:
        raise KdnbError(f"augment changed the inputs' dtype from {x.dtype} to {out.dtype}; make it keep the dtype")
    if not bool(torch.isfinite(out).all()):
        raise KdnbError("augment returned NaN or infinite values on the first batch; check the transform")


def mixup(x: torch.Tensor, y: torch.Tensor, concentration: float) -> tuple[torch.Tensor, Mix]:
    """mixup, Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization":

        lam ~ Beta(a, a),   x~ = lam * x + (1 - lam) * x[perm]   (one lam and one permutation per batch)

    Returns x~ and the partner labels with lam, ``(y[perm], lam)``, for the mixed hard-label term.
    """
    lam = float(torch.distributions.Beta(concentration, concentration).sample())
    perm = torch.randperm(len(x), device=x.device)
    return lam * x + (1 - lam) * x[perm], (y[perm], lam)
