"""The criteria's registry. A criterion is one formula function and one `Criterion` record; what the formula
reads besides the weight is one `Statistic` record (its name, how it is estimated from a `Context`, what it needs),
declared beside the formula in the criterion's module of `kdnb.engine.prune.score.criteria`. `register` adds a
criterion (with a new statistic too) in one call; `kdnb.prune`, `importance`, the checks, the sparsity explorer
and the magics' help read `REGISTRY`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from kdnb.engine.prune.graph.groups import ChannelGroup, prunable_weights
from kdnb.engine.prune.score import calibration
from kdnb.errors import KdnbError


@dataclass
class Context:
    """What a statistic may read: the model, the data (its first ``samples`` samples), the mode, the seed, the
    hessian criterion's estimator and, structured, the coupled channel groups."""

    model: nn.Module
    data: Iterable | None
    structured: bool
    seed: int
    hessian_estimator: str
    groups: list[ChannelGroup]
    samples: int = calibration.SAMPLES
    progress: Callable[[int, int], None] | None = None  # (layers done, layers) as a calibration pass moves on

    def scored(self) -> dict[str, torch.Tensor]:
        """The parameters an element criterion scores: every one when structured (BatchNorm included)."""
        params = dict(self.model.named_parameters(remove_duplicate=False))  # a tied weight under each name
        return {n: p.detach() for n, p in params.items()} if self.structured else \
            {n: params[n].detach() for n in prunable_weights(self.model)}

    def with_weights(self, stats: dict[str, torch.Tensor]) -> dict[str, tuple]:
        """``(weight, statistic)`` of every scored parameter the statistic covers: an element formula's arguments."""
        return {n: (w, stats[n]) for n, w in self.scored().items() if n in stats}


@dataclass(frozen=True, kw_only=True)
class Statistic:
    """What a formula reads besides the weight.

    Attributes:
        name: its name (shown in messages).
        estimate: ``Context -> {parameter or channel-group root: the formula's arguments}``.
        needs_data: it is estimated on batches of ``data``.
        gradients: it takes a backward pass (or a training run) over labelled data: the entry checks labels and
            trainable parameters.
        trains: the model is trained first (network slimming's L1 phase), ``slimming_epochs`` epochs.
        drawn: drawn from the seed, independent of the weights: re-scoring after a refit changes nothing.
        requires: ``(model, criterion) -> None``, raising a one-line `KdnbError` when the model lacks what the
            statistic reads (network slimming: a BatchNorm).
    """

    name: str
    estimate: Callable[[Context], dict[str, tuple]]
    needs_data: bool = False
    gradients: bool = False
    trains: bool = False
    drawn: bool = False
    requires: Callable[[nn.Module, str], None] | None = None


@dataclass(frozen=True, kw_only=True)
class Criterion:
    """One criterion of the registry.

    Attributes:
        name: what users pass as ``criterion=``.
        formula: the score function above, called as ``formula(weight, statistic)`` (or ``formula(weight)``).
        statistic: what the formula reads besides the weight (a `Statistic`), or None: the weight alone.
        unstructured, structured: the modes it can score (single weights, whole channels).
        label, colour: how plots and widgets show it.
        channel: structured, the formula scores channels directly (from a channel-level statistic: random draws
            one number per channel), not their elements.
        per_row: with ``scope="local"``, weights compete within each output row (Wanda), not the whole layer.
        normalise: structured global ranking divides a layer's channel scores by their mean first (magnitudes
            of different layers are not comparable).
        layerwise: the scores are not comparable across layers (one layer's output error for obs/wanda; loss
            estimates whose scale varies by orders of magnitude between layers for taylor/hessian, so that a raw
            global threshold empties layers: bench/prune_oneshot.py); unstructured global ranking uses their
            `lamp_normalise` form, which cannot empty a layer either.
        reselect: with reconstruction, each layer's mask is re-chosen at the sparsity the scores gave it, by
            SparseGPT's OBS sweep on the already-pruned inputs (`kdnb.engine.prune.rebuild.reconstruct.sparsegpt`).
        reads: structured, a channel's score sums the element scores of the weights that *read* it only (the
            next layers' input columns), not of those that produce it (its filter, bias, BatchNorm): removing a
            channel is exactly zeroing what reads it, whatever produced it. For wanda this is Wanda-sp (An et al.
            2024). Set where reading weights beat the whole group in bench/prune_oneshot.py (obs, wanda, hessian on
            the notebook-02 teacher; obs on cnn_bn); taylor keeps its whole group.
        raw_when_gradual: ``layerwise`` only for a one-shot cut; a gradual schedule ("iterative", "agp") ranks the
            raw scores globally: they estimate one loss, and with fine-tuning between the steps their uneven
            allocation across layers wins (hessian to 98 % on LeNet-300-100, agp and iterative:
            bench/prune_sparsity.py).
    """

    name: str
    formula: Callable[..., torch.Tensor]
    label: str
    colour: str
    statistic: Statistic | None = None
    unstructured: bool = True
    structured: bool = True
    channel: bool = False
    per_row: bool = False
    normalise: bool = False
    layerwise: bool = False
    reselect: bool = False
    reads: bool = False
    raw_when_gradual: bool = False

    @property
    def needs_data(self) -> bool:
        """Its statistic is estimated on batches of ``data``."""
        return self.statistic is not None and self.statistic.needs_data


REGISTRY: dict[str, Criterion] = {}


def register(criterion: Criterion) -> Criterion:
    """Add ``criterion`` to the registry (its statistic comes with it): `kdnb.prune`, `importance`, the sparsity
    explorer and the magics' help know it from then on. A name already registered is a `KdnbError`."""
    if criterion.name in REGISTRY:
        raise KdnbError(f"a criterion named {criterion.name!r} is registered already; pick another name")
    REGISTRY[criterion.name] = criterion
    return criterion


def names(structured: bool | None = None) -> tuple[str, ...]:
    """The registered criteria (that support single weights when ``structured=False``, channels when True)."""
    return tuple(name for name, c in REGISTRY.items()
                 if structured is None or (c.structured if structured else c.unstructured))


register_criterion = register  # the name `kdnb` exports it under, beside `kdnb.register_method`
