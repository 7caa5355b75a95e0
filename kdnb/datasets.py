"""Embedded datasets: nothing is downloaded. Each `load` returns (train, val) DataLoaders,
deterministic for a seed.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes).
- ``mnist1d``: MNIST-1D (Greydanus 2020), generated offline by the ``mnist1d`` package:
  40-sample 1-D signals, 10 classes; a small benchmark where architecture choices still matter.
- ``synthetic``: Gaussian class clusters, for fast tests.

`transfer_set` makes extra unlabeled inputs from the same distribution, which a teacher can
label for distillation (Hinton et al. 2015 train the student on such a transfer set).
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from kdnb.errors import KdnbError, is_integer, is_number, suggest

NAMES = ("digits", "mnist1d", "synthetic")


def load(
    name: str,
    batch_size: int = 64,
    seed: int = 0,
    *,
    val_fraction: float = 0.2,
    flat: bool = True,
    num_samples: int | None = None,
    num_workers: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """Return ``(train, val)`` loaders of float32 inputs and int64 labels.

    ``flat=True`` gives vectors (for MLPs); ``flat=False`` gives ``(1, 8, 8)`` digits images or
    ``(1, 40)`` MNIST-1D signals (for CNNs). Inputs are standardised with the train split's
    statistics. The train loader shuffles with its own generator seeded by ``seed``.
    """
    _check_count("batch_size", batch_size, "64")
    _check_flag("flat", flat)
    if not (is_integer(num_workers) and num_workers >= 0):
        raise KdnbError(f"num_workers should be a non-negative integer, got {num_workers!r}; pass e.g. num_workers=0")
    x_train, y_train, x_val, y_val = arrays(name, seed=seed, val_fraction=val_fraction, num_samples=num_samples)
    if not flat:
        x_train, x_val = _unflatten(name, x_train), _unflatten(name, x_val)
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True,
                       generator=generator, num_workers=num_workers)
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=max(batch_size, 256), shuffle=False,
                     num_workers=num_workers)
    return train, val


def arrays(name: str, seed: int = 0, val_fraction: float = 0.2, num_samples: int | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The standardised (x_train, y_train, x_val, y_val) tensors behind `load`."""
    if not isinstance(name, str) or name not in NAMES:
        raise KdnbError(f"unknown dataset {name!r}; {suggest(str(name), NAMES)} (known: {', '.join(NAMES)})")
    _check_seed(seed)
    if not (is_number(val_fraction) and 0.0 < val_fraction < 1.0):
        raise KdnbError(f"val_fraction should be a number between 0 and 1, got {val_fraction!r}; pass e.g. "
                        "val_fraction=0.2")
    if num_samples is not None:
        _check_count("num_samples", num_samples, "2000")
        if round(num_samples * val_fraction) < 1 or round(num_samples * (1 - val_fraction)) < 1:
            raise KdnbError(f"num_samples={num_samples} leaves an empty split at val_fraction={val_fraction}; "
                            "pass more samples")
    x, y = _raw(name, num_samples, seed)
    train_idx, val_idx = _split(len(x), seed, val_fraction, num_samples if name == "digits" else None)
    mean, std = _statistics(x[train_idx])
    x = (x - mean) / std
    as_x = lambda idx: torch.tensor(x[idx], dtype=torch.float32)  # noqa: E731
    as_y = lambda idx: torch.tensor(y[idx], dtype=torch.int64)  # noqa: E731
    return as_x(train_idx), as_y(train_idx), as_x(val_idx), as_y(val_idx)


def transfer_set(name: str = "mnist1d", num_samples: int = 10000, seed: int = 1, batch_size: int = 64,
                 *, flat: bool = True, reference_seed: int = 0) -> DataLoader:
    """Extra *unlabeled* inputs (batches of x only) from the same distribution as ``load(name)``.

    Standardised with the statistics of ``load(name, seed=reference_seed)``'s train split so
    a teacher sees them as it sees its training data. ``seed`` must differ from the dataset's own
    seed, or the transfer set repeats the training inputs.
    """
    if name not in ("mnist1d", "synthetic"):
        raise KdnbError(f"no transfer set generator for {name!r}; use 'mnist1d' or 'synthetic'")
    _check_count("num_samples", num_samples, "10000")
    _check_count("batch_size", batch_size, "64")
    _check_seed(seed)
    _check_seed(reference_seed, "reference_seed")
    _check_flag("flat", flat)
    x = _raw(name, num_samples, seed + 10_000)[0]
    reference = _raw(name, None, reference_seed)[0]
    mean, std = _statistics(reference[_split(len(reference), reference_seed, 0.2)[0]])
    x = (x - mean) / std
    tensor = torch.tensor(x, dtype=torch.float32)
    if not flat:
        tensor = _unflatten(name, tensor)
    return DataLoader(_Unlabeled(tensor), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def _check_count(name: str, value: object, example: str) -> None:
    if not (is_integer(value) and value > 0):
        raise KdnbError(f"{name} should be a positive integer, got {value!r}; pass e.g. {name}={example}")


def _check_seed(seed: object, name: str = "seed") -> None:
    if not (is_integer(seed) and 0 <= seed < 2**32):
        raise KdnbError(f"{name} should be an integer in 0..2**32-1, got {seed!r}; pass e.g. {name}=0")


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise KdnbError(f"{name} should be True or False, got {value!r}; pass {name}=True or {name}=False")


def _raw(name: str, num_samples: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's inputs and labels before splitting and standardising."""
    if name == "digits":
        return _digits()
    if name == "mnist1d":
        return _mnist1d(num_samples or 5000, seed=seed)
    return _synthetic(num_samples or 2000, seed=seed)


def _split(count: int, seed: int, val_fraction: float, keep: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: a seeded permutation of ``count`` samples (its first ``keep``), cut at val_fraction."""
    order = np.random.default_rng(seed).permutation(count)[:keep]
    cut = int(round(len(order) * (1 - val_fraction)))
    return order[:cut], order[cut:]


def _statistics(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of the train split; every split and transfer set is standardised with them."""
    return x_train.mean(axis=0), x_train.std(axis=0) + 1e-6


class _Unlabeled(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.x[index]


def _unflatten(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "digits":
        return x.reshape(-1, 1, 8, 8)
    return x.reshape(len(x), 1, -1)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.float32), bunch.target.astype(np.int64)


@functools.lru_cache(maxsize=8)  # generating takes seconds; load() and transfer_set() reuse the arrays (never mutated)
def _mnist1d(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate MNIST-1D offline (the package's own generator; its download URL is never used)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = num_samples, 42 + seed, 1.0 - 1e-9
    data = make_dataset(args)
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)
    y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    return x, y


def _synthetic(num_samples: int, seed: int, num_features: int = 20, num_classes: int = 4
               ) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters: class c centred at a random point, unit noise, separable but not trivially."""
    rng = np.random.default_rng(1234)  # the class centres are part of the dataset, the same for every seed
    centres = rng.normal(0.0, 1.0, size=(num_classes, num_features)) * 1.5
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, size=num_samples)
    x = centres[y] + rng.normal(0.0, 1.0, size=(num_samples, num_features))
    return x.astype(np.float32), y.astype(np.int64)


def statistics(name: str, seed: int = 0, *, val_fraction: float = 0.2, num_samples: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-feature (mean, std) that `load` (same arguments) standardises its inputs with.

    An augmentation that works on the raw inputs (pixel shifts, rotations) undoes the
    standardisation with them, transforms, and standardises again.
    """
    if name not in NAMES:
        raise KdnbError(f"unknown dataset {name!r}; {suggest(str(name), NAMES)} (known: {', '.join(NAMES)})")
    x, _ = _raw(name, num_samples, seed)
    train_idx, _ = _split(len(x), seed, val_fraction, num_samples if name == "digits" else None)
    mean, std = _statistics(x[train_idx])
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
