"""Checks of user input that turn deep torch tracebacks into one-line errors naming the fix."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from kdnb.errors import KdnbError, first_line, is_integer, is_number  # noqa: F401 - the checks' words
from kdnb.engine.evaluate import eval_mode
from kdnb.engine.objective import split_batch


def check_model(model: Any, what: str = "model") -> torch.nn.Module:
    if not isinstance(model, torch.nn.Module):
        raise KdnbError(f"{what} should be a torch.nn.Module, got {type(model).__name__}")
    return model


def check_loader(data: Any, what: str = "data") -> Iterable:
    """A DataLoader (or any re-iterable of batches) that yields at least one batch."""
    if isinstance(data, (torch.Tensor, Iterator)) or not hasattr(data, "__iter__"):
        raise KdnbError(
            f"{what} should be a torch DataLoader of (inputs, labels) batches, got {type(data).__name__}; "
            "wrap tensors with DataLoader(TensorDataset(x, y), batch_size=64)"
        )
    try:
        if len(data) == 0:
            raise KdnbError(f"{what} is empty (0 batches); check the dataset and that batch_size <= its size "
                            "when drop_last=True")
    except TypeError:
        pass  # an iterable without len: checked when the first batch is drawn
    return data


def first_batch(data: Iterable, what: str = "data") -> Any:
    for batch in data:
        return batch
    raise KdnbError(f"{what} is empty (it yielded no batch)")


def check_positive(name: str, value: Any, integer: bool = False) -> None:
    if not (is_integer(value) if integer else is_number(value)) or value <= 0:
        raise KdnbError(f"{name} should be a positive {'integer' if integer else 'number'}, got {value!r}")


@torch.no_grad()
def check_model_fits_data(model: torch.nn.Module, batch: Any, device: torch.device, what: str = "model") -> int:
    """Run ``model`` on one batch (eval mode, weights untouched) and check logits against labels.

    Returns the number of classes the model outputs.
    """
    x, y = split_batch(batch)
    try:
        with eval_mode(model):
            out = model(x.to(device))
    except (RuntimeError, ValueError, TypeError) as error:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise KdnbError(f"{what} failed on an input batch of shape {shape}: {first_line(error)} "
                        "-- check that the model's input size matches the data") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise KdnbError(f"{what} should return logits of shape (batch, classes), got {shape}")
    num_classes = out.shape[1]
    if y is not None:
        if y.dtype.is_floating_point or y.dim() != 1:
            raise KdnbError(f"labels should be a 1-D integer tensor of class indices, got dtype {y.dtype} "
                            f"and shape {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise KdnbError(f"labels out of range: found {int(y.min())}..{int(y.max())} but {what} outputs "
                            f"{num_classes} classes; give the last layer one output per class")
    return num_classes


def check_labels_in_range(data: Any, num_classes: int) -> None:
    """Check every label at once when the dataset holds them as a tensor (cheap), else only batch one."""
    dataset = getattr(data, "dataset", None)
    tensors = getattr(dataset, "tensors", None)
    if tensors and len(tensors) > 1 and not tensors[1].dtype.is_floating_point and tensors[1].numel():
        low, high = int(tensors[1].min()), int(tensors[1].max())
        if low < 0 or high >= num_classes:
            raise KdnbError(f"labels out of range: the dataset has labels {low}..{high} but the model outputs "
                            f"{num_classes} classes; give the last layer one output per class")
