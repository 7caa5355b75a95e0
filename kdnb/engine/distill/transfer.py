"""The transfer set of Hinton et al. 2015: extra unlabelled inputs that only the teacher labels.

The student trains on the labelled data and the transfer inputs shuffled together. A transfer
input carries the label -1 (`losses.UNLABELLED`): the soft-label term uses every sample, the
hard-label cross-entropy only the labelled ones.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from kdnb.errors import KdnbError
from kdnb.engine.distill.losses import UNLABELLED
from kdnb.engine.batches import split_batch


class WithTransfer(Dataset):
    """Items 0..len(labelled)-1 are (x, y) from ``labelled``; the rest (x, -1) from ``transfer``."""

    def __init__(self, labelled: Any, transfer: Any):
        self.labelled, self.transfer = labelled, transfer

    def __len__(self) -> int:
        return len(self.labelled) + len(self.transfer)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        if index < len(self.labelled):
            args, _, y = split_batch(self.labelled[index])
            return args[0], torch.as_tensor(y, dtype=torch.int64)
        args, _, _ = split_batch(self.transfer[index - len(self.labelled)])
        return args[0], torch.tensor(UNLABELLED, dtype=torch.int64)


def with_transfer(data: DataLoader, transfer: Any) -> DataLoader:
    """One shuffled loader over ``data`` and the ``transfer`` inputs, with ``data``'s batch size.

    ``transfer`` is a DataLoader of inputs (e.g. `kdnb.datasets.transfer_set`) or a tensor of them.
    It shuffles with ``data``'s generator (or a fresh one), so a seeded run is reproducible.
    """
    extra = transfer if isinstance(transfer, torch.Tensor) else getattr(transfer, "dataset", None)
    for what, given, dataset in (("data", data, getattr(data, "dataset", None)), ("transfer", transfer, extra)):
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise KdnbError(f"with a transfer set, {what} should be a DataLoader over a map-style dataset "
                            f"(indexable, with a length), got {type(given).__name__}")
    generator = data.generator if data.generator is not None else torch.Generator()
    return DataLoader(WithTransfer(data.dataset, extra), batch_size=data.batch_size or 64,
                      shuffle=True, drop_last=data.drop_last, num_workers=data.num_workers,
                      pin_memory=data.pin_memory, generator=generator)
