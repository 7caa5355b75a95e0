"""An inference copy of a (pruned) model: the fastest plain-PyTorch form of the same function."""
from __future__ import annotations

import torch
from torch import nn

from kdnb.errors import KdnbError, warn
from kdnb.engine.prune.cut.channels import fold_batchnorm as fold
from kdnb.engine.prune.cut.masks import clone, make_permanent

SPARSE_DTYPES = (torch.float16, torch.bfloat16)  # the dtypes whose sparse tensor-core format is 2:4


def export(model: nn.Module, *, fold_batchnorm: bool = True, channels_last: bool = True,
           semi_structured: bool = False) -> nn.Module:
    """A copy of ``model`` for inference, in eval mode: masks folded into plain weights (`make_permanent`),
    each BatchNorm folded into the Conv/Linear before it (one pass over the activations less per layer),
    and 4-D weights in ``torch.channels_last`` memory format (oneDNN's native layout on CPU, so convolutions
    skip reordering their inputs). The outputs are those of ``model.eval()`` up to float rounding.
    ``model`` is not changed.

    ``semi_structured=True`` (a model pruned with ``pattern="2:4"``, on a CUDA GPU of compute capability 8.0
    or newer, in float16 or bfloat16) also stores every 2:4 Linear weight as
    ``torch.sparse.to_sparse_semi_structured``, so its matmuls run on sparse tensor cores; a Linear that torch's
    kernels refuse (its shape) stays dense, with a warning naming it. A 2:4 conv stays a dense conv with zeros:
    torch has no sparse convolution kernel (TensorRT has, and kdnb's conv masks follow its layout: 2 of every 4
    input channels). Measured by bench/nm_speed.py.
    """
    if semi_structured:
        _check_semi_structured(model)
    inference = make_permanent(clone(model)).eval()
    if fold_batchnorm:
        fold(inference)
    if channels_last:
        inference.to(memory_format=torch.channels_last)
    if semi_structured:
        _to_semi_structured(inference)
    return inference


def two_four(weight: torch.Tensor) -> bool:
    """At most 2 non-zeros in every 4 consecutive inputs of each row (a ``(out, in)`` weight, ``in % 4 == 0``)."""
    return weight.dim() == 2 and weight.shape[1] % 4 == 0 and \
        bool(((weight.detach() != 0).reshape(weight.shape[0], -1, 4).sum(-1) <= 2).all())


def _sparse_linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and two_four(m.weight)}


def _check_semi_structured(model: nn.Module) -> None:
    """One-line refusals, before any copy: no 2:4 layer, not on a capable GPU, not in half precision."""
    layers = _sparse_linears(model)  # a masked weight reads as its masked value
    if not layers:
        raise KdnbError("semi_structured=True converts 2:4 Linear weights, and this model has none: prune it "
                        "with kdnb.prune(model, 0.5, pattern='2:4', ...) first")
    devices = {m.weight.device for m in layers.values()}
    if any(d.type != "cuda" for d in devices):
        raise KdnbError("semi_structured=True needs the model on a CUDA GPU with sparse tensor cores (compute "
                        "capability 8.0+, e.g. A100, H100, RTX 30xx): move it with model.cuda().half(); on a CPU a "
                        "2:4 model runs at dense speed")
    old = [d for d in devices if torch.cuda.get_device_capability(d)[0] < 8]
    if old:
        raise KdnbError(f"semi_structured=True needs sparse tensor cores (compute capability 8.0+), and {old[0]} has "
                        f"{torch.cuda.get_device_capability(old[0])}: export without it on this GPU")
    if any(m.weight.dtype not in SPARSE_DTYPES for m in layers.values()):
        raise KdnbError("semi_structured=True needs float16 or bfloat16 weights (the 2:4 format of sparse tensor "
                        "cores): cast the model with model.half() first")


def _to_semi_structured(model: nn.Module) -> None:
    from torch.sparse import to_sparse_semi_structured

    dense = {}
    for name, layer in _sparse_linears(model).items():
        try:
            layer.weight = nn.Parameter(to_sparse_semi_structured(layer.weight.detach().contiguous()),
                                        requires_grad=False)
        except RuntimeError as error:  # torch's kernels need each dimension a multiple of a block (16-64)
            dense[name] = str(error).splitlines()[0]
    if dense:
        warn(f"{len(dense)} 2:4 Linear layer(s) stay dense, which torch's sparse kernels refused: "
             + "; ".join(f"{n!r}: {why}" for n, why in dense.items()), RuntimeWarning)
