"""An inference copy of a (pruned) model: the fastest plain-PyTorch form of the same function."""
from __future__ import annotations

import torch
from torch import nn

from kdnb.engine.prune.structured import fold_batchnorm as fold
from kdnb.engine.prune.unstructured import clone, make_permanent


def export(model: nn.Module, *, fold_batchnorm: bool = True, channels_last: bool = True) -> nn.Module:
    """A copy of ``model`` for inference, in eval mode: masks folded into plain weights (`make_permanent`),
    each BatchNorm folded into the Conv/Linear before it (one pass over the activations less per layer),
    and 4-D weights in ``torch.channels_last`` memory format (oneDNN's native layout on CPU, so convolutions
    skip reordering their inputs). The outputs are those of ``model.eval()`` up to float rounding.
    ``model`` is not changed.
    """
    inference = make_permanent(clone(model)).eval()
    if fold_batchnorm:
        fold(inference)
    if channels_last:
        inference.to(memory_format=torch.channels_last)
    return inference
