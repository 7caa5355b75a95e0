"""Where and how a model runs: resolve a device name, move nested batches to it, evaluate in eval mode."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from kdnb.errors import KdnbError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> CUDA when available (under torchrun each process's own GPU, cuda:LOCAL_RANK), else CPU (the
    environment variable KDNB_DEVICE, e.g. "cpu", overrides what "auto" picks); any other name must exist here."""
    if device == "auto" and os.environ.get("KDNB_DEVICE", "auto") != "auto":
        device = os.environ["KDNB_DEVICE"]
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto" and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return _local_gpu(int(os.environ["LOCAL_RANK"]))
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError):
            raise KdnbError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise KdnbError(f"device {device!r} asked for CUDA but no GPU is available; use device='auto' or 'cpu'")
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise KdnbError(f"unsupported device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return resolved


def _local_gpu(local_rank: int) -> torch.device:
    """torchrun's process ``local_rank`` of this node takes GPU ``local_rank`` (one process per GPU)."""
    if local_rank >= torch.cuda.device_count():
        raise KdnbError(f"torchrun started process {local_rank} on this node but it has {torch.cuda.device_count()} "
                        f"GPU(s); use torchrun --nproc_per_node={torch.cuda.device_count()}, or device='cpu'")
    return torch.device("cuda", local_rank)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        # Tensor.to costs microseconds even when it has nothing to do; that adds up over steps.
        return batch if batch.device == device else batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    return batch


def model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode inside (dropout off, BatchNorm running statistics); afterwards each submodule gets back
    its own mode, which may differ from its parent's (e.g. a frozen BatchNorm inside a training model)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
