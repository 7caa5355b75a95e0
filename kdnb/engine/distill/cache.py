"""The soft-label cache: step 2 of distillation done once instead of every epoch.

Without augmentation a sample's input is the same every epoch, so the (frozen) teacher's logits for
it are too: compute them once per sample, keep them in memory (optionally float16) and hand them
out with the batch. With random augmentation each epoch shows a new view of the sample, whose
soft label the cache would not have: the cached labels go stale, and the teacher must run live.
"""
from __future__ import annotations

import random
import warnings
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torch.utils.data._utils.collate import default_collate

from kdnb.engine.checks import numbered_batches
from kdnb.engine.distributed import gather_shards, shard_range
from kdnb.errors import KdnbError
from kdnb.engine.batches import split_batch

# Class-name fragments of random data augmentations (torchvision, albumentations, kornia...).
RANDOM_NAMES = ("Random", "AutoAugment", "RandAugment", "TrivialAugment", "AugMix", "ColorJitter")


def random_transforms(dataset: Any) -> list[str]:
    """Names of the random transforms found on ``dataset`` (and datasets it wraps), in the order found."""
    found: list[str] = []
    queue, seen = deque([dataset]), set()
    while queue:
        obj = queue.popleft()
        if obj is None or id(obj) in seen or isinstance(obj, (torch.Tensor, np.ndarray, str, bytes)):
            continue
        seen.add(id(obj))
        if any(fragment in type(obj).__name__ for fragment in RANDOM_NAMES):
            found.append(type(obj).__name__)
        if isinstance(obj, (list, tuple)):
            queue.extend(obj)
            continue
        for attr in ("transform", "transforms", "target_transform", "dataset", "datasets"):
            queue.append(getattr(obj, attr, None))
    return found


def reads_differ(dataset: Any, index: int = 0) -> bool:
    """Whether reading the same sample twice gives different inputs (randomness in __getitem__).

    The global random states are restored afterwards, so the check leaves the run reproducible.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            first, second = split_batch(dataset[index])[0][0], split_batch(dataset[index])[0][0]
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor):
        return first.shape != second.shape or not torch.equal(first, second)
    return False


def augmentation(data: Any) -> str | None:
    """Why ``data`` looks randomly augmented (random transforms, or two reads of a sample differ), or None."""
    dataset = getattr(data, "dataset", data)
    names = random_transforms(dataset)
    if names:
        return f"random transform {names[0]}"
    try:
        differ = len(dataset) > 0 and reads_differ(dataset)
    except (TypeError, IndexError, KeyError, NotImplementedError):
        return None
    return "reading the same sample twice gave different inputs" if differ else None


def cache_blocker(data: Any, single: bool = True) -> str | None:
    """Why teacher logits of ``data`` cannot be cached per sample, or None when they can (``single``: its batches
    are (inputs, labels) of one input tensor and the teacher's logits one row per sample)."""
    if not single:
        return "the cache keeps one row of logits per sample of (inputs, labels) batches"
    dataset = getattr(data, "dataset", None)
    if not isinstance(data, DataLoader) or dataset is None:
        return "the data is not a torch DataLoader"
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        return "the dataset has no per-index access (an IterableDataset)"
    if data.collate_fn is not default_collate:
        return "the DataLoader has its own collate_fn"
    if data.batch_sampler is None:
        return "the DataLoader has no batch sampler (batch_size=None)"
    return None


class SoftLabelled(Dataset):
    """``dataset`` with a teacher's logits per sample: item i is (x_i, y_i, logits_i).

    A whole batch is read by `__getitems__`: the samples collated as the user's loader would (for a
    TensorDataset, one gather per tensor), plus one gather of their logits, so the cache adds next to
    nothing to loading a batch.
    """

    def __init__(self, dataset: Any, logits: torch.Tensor):
        self.dataset, self.logits = dataset, logits

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any, torch.Tensor]:
        return (*_input_and_label(self.dataset[index]), self.logits[index])

    def __getitems__(self, indices: list[int]) -> list[Any]:
        index = torch.as_tensor(indices)
        if isinstance(self.dataset, TensorDataset):
            # One gather per tensor gives what collating the samples one by one would, without the loop.
            x, y = _input_and_label(tuple(tensor.index_select(0, index) for tensor in self.dataset.tensors))
        else:
            read = getattr(self.dataset, "__getitems__", None)
            samples = read(indices) if read else [self.dataset[i] for i in indices]
            x, y = _input_and_label(default_collate(samples))
        return [x, y, self.logits.index_select(0, index)]


def _input_and_label(item: Any) -> tuple[Any, Any]:
    """(input, label or None) of a sample or batch of one input tensor (the only kind the cache takes)."""
    args, _, y = split_batch(item)
    return args[0], y


def _collated(batch: list[Any]) -> list[Any]:
    """The collate_fn of a cached loader: `SoftLabelled.__getitems__` already made the batch."""
    return batch


@torch.no_grad()
def teacher_logits(teacher: Callable[[torch.Tensor], torch.Tensor], dataset: Any, batch_size: int,
                   device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The teacher's logits for every sample of ``dataset``, in index order, one pass, kept on CPU.

    On several processes each labels its contiguous share of the indices once, and the shares are gathered:
    every rank holds the whole cache, indexed by dataset index as its sampler's shard reads it."""
    share = shard_range(len(dataset))
    # An empty share (fewer samples than processes) still needs the logits' width: sample 0's, none kept.
    read, keep = (share, None) if len(share) else (range(1), 0)
    if isinstance(dataset, TensorDataset):  # slices of the tensors: no sample-by-sample collation
        batches = (tuple(t[i:min(i + batch_size, read.stop)] for t in dataset.tensors)
                   for i in range(read.start, read.stop, batch_size))
    else:
        batches = DataLoader(Subset(dataset, read), batch_size=batch_size, shuffle=False)
    batches = numbered_batches(batches, lambda i: f"batch {i + 1} of the soft-label cache pass")  # one line if bad
    rows = torch.cat([teacher(_input_and_label(batch)[0].to(device)).to("cpu", dtype) for _, batch in batches])
    return gather_shards(rows[:keep], len(dataset))


def cached_loader(data: DataLoader, logits: torch.Tensor) -> DataLoader:
    """A loader like ``data`` (same batches, same shuffling generator) that also yields the logits.

    It reuses ``data``'s own batch sampler, so a seeded run visits the samples in the same order
    whether the soft labels come from the cache or from the live teacher.
    """
    return DataLoader(SoftLabelled(data.dataset, logits), batch_sampler=data.batch_sampler, collate_fn=_collated,
                      num_workers=data.num_workers, pin_memory=data.pin_memory, generator=data.generator)


def decide(cache: Any, loader: DataLoader, augmented: str | None, features: bool,
           single: bool = True) -> tuple[bool, str]:
    """Whether to cache, and how the run gets its soft labels, in words for the result.

    ``cache="auto"`` caches unless the loader is randomly augmented (``augmented`` says why), cannot
    be indexed per sample, or the method needs the teacher's features every step (``features``).
    Forcing the cache on augmented data warns that the soft labels go stale.
    """
    blocker = ("feature methods (fitnets, cosine, at) read the teacher's features every step" if features
               else cache_blocker(loader, single))
    if cache is False:
        return False, "live teacher (cache=False)"
    if cache == "auto":
        reason = blocker or (f"randomly augmented data: {augmented}" if augmented else None)
        return (False, f"live teacher ({reason})") if reason else (True, "cached soft labels")
    if blocker:
        raise KdnbError(f"cache={cache!r} is not possible here: {blocker}; use cache='auto' or cache=False")
    if augmented:
        warnings.warn(f"cached soft labels go stale: {augmented} shows a new view of each sample every epoch, but "
                      "the cache holds the teacher's logits for one view; use cache='auto' to run the teacher live",
                      UserWarning, stacklevel=3)
    how = "cached soft labels" + (" (float16)" if cache == "fp16" else "")
    return True, how + (" (stale: the data is augmented)" if augmented else "")
