"""What `prune` and `sensitivity` return: the model, the numbers, a table and a picture."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdnb.engine.history import History
from kdnb.engine.prune.phases import cost_line
from kdnb.engine.prune.cut.masks import clone, make_permanent
from kdnb.engine.prune.graph.groups import prunable_weights
from kdnb.engine.prune.inference import export
from kdnb.engine.prune.select.patterns import parse_pattern, pattern_misfits
from kdnb.engine.results import Result, draw
from kdnb.engine.table import Table, format_value


@dataclass(repr=False)
class PruneResult(Result):
    """The outcome of `prune`.

    Attributes:
        model: the pruned model (unstructured: masks attached and fixed, see `make_permanent`;
            structured: smaller layers). It carries a ``kdnb_pruned`` marker, so pruning it again needs
            ``prune_again=True``.
        dense: a copy of the model before pruning (the unpruned reference).
        masks: unstructured: ``{"layer.weight": bool mask}`` (True = kept); structured: empty.
        channels: structured: ``{"layer": (kept, original)}`` output channels of each layer that lost some.
        sparsity: the fraction of prunable weights removed (``target`` was asked for).
        start_sparsity: the fraction the model's masks held at zero when it came in (torch.nn.utils.prune's or an
            earlier prune's); they stay zero (masks only grow), so ``sparsity`` is at least this.
        history: the fine-tuning runs, one after the other (per-epoch "sparsity" included).
        trajectory: one entry per pruning step: target, sparsity reached, val accuracy right after it
            (and after fine-tuning, "finetuned_acc"), whether it re-solved the kept weights ("resolved").
        dense_accuracy: val accuracy of ``dense`` (None without val).
        control: with ``control=True``, the unpruned model fine-tuned for as long (Blalock et al. 2020).
        reconstructed: the kept weights were re-solved on calibration data (`kdnb.engine.prune.rebuild.reconstruct`), at
            every pruning step or, by default in a gradual schedule, at those the trajectory marks "resolved".
        pattern: the "N:M" semi-structured pattern of the masks, or None.
        ranking: with ``scope="latency"``, the ranking its timing chose ("cost" or "global"), else None.
        max_layer_sparsity: structured, the most of any layer's channels the cut could remove (``max_layer_sparsity``
            or the scope's default, `kdnb.engine.prune.score.importance.layer_cap`); None when unstructured.
    """

    model: nn.Module
    dense: nn.Module
    masks: dict[str, torch.Tensor]
    criterion: str
    structured: bool
    scope: str
    schedule: str
    steps: int
    target: float
    sparsity: float
    finetune: int
    distill: bool
    history: History
    trajectory: list[dict[str, Any]]
    dense_accuracy: float | None = None
    val: Iterable | None = None
    example: Any = None  # a tensor, a tuple of inputs or a mapping of keyword inputs
    control: nn.Module | None = None
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)
    reconstructed: bool = False
    pattern: str | None = None
    ranking: str | None = None
    max_layer_sparsity: float | None = None
    start_sparsity: float = 0.0
    cost: dict[str, float] | None = None  # the prune's seconds and peak memory (`phases.cost`)
    _comparison: Any = field(default=None, compare=False)  # see Result.comparison
    measure_with: Callable[..., Any] | None = field(default=None, compare=False)  # see Result.comparison

    def export(self, fold_batchnorm: bool = True, channels_last: bool = True,
               semi_structured: bool = False) -> nn.Module:
        """An inference copy of the pruned model (see `kdnb.engine.prune.inference.export`): masks folded,
        BatchNorm folded into the layer before it, channels-last weights, eval mode; ``semi_structured=True``
        (a "2:4" prune, on a CUDA GPU, in half precision) stores its 2:4 weights for sparse tensor cores."""
        return export(self.model, fold_batchnorm=fold_batchnorm, channels_last=channels_last,
                      semi_structured=semi_structured)

    def plain_model(self) -> nn.Module:
        """The pruned model with its masks folded, as `kdnb.save` stores it (compared like for like)."""
        return make_permanent(clone(self.model))

    def layers(self) -> Table:
        """Per layer: weights kept of the original, and the layer's sparsity."""
        before = {n: w.numel() for n, w in prunable_weights(self.dense).items()}
        plain = self.plain_model()
        rows = []
        for name, weight in prunable_weights(plain).items():
            kept = int(torch.count_nonzero(weight))
            rows.append([name, before[name], kept, f"{1 - kept / before[name]:.1%}"])
        return Table(["layer", "weights", "kept", "sparsity"], rows)

    def _compared(self) -> tuple[dict[str, nn.Module], Any]:
        models = {"dense": self.dense, "pruned": self.plain_model()}
        if self.control is not None:
            models["control"] = self.control
        return models, self.val if self.val is not None else self.example

    def _home(self) -> nn.Module:
        return self.model

    def overview(self) -> Table:
        """Accuracy and sparsity from the run (no new measurement: cheap enough for ``repr``)."""
        if self.dense_accuracy is None:
            return self._layer_table()
        last = self.trajectory[-1] if self.trajectory else {}
        pruned_acc = self.history.last("val_acc") if self.finetune else last.get("val_acc")
        rows = [["val accuracy", self.dense_accuracy, pruned_acc],
                ["sparsity (Linear/Conv weights)", f"{self.start_sparsity:.2%}", f"{self.sparsity:.2%}"]]
        return Table(["", "dense", "pruned"], rows, title=self._headline(),
                     notes=["summary() measures params, non-zeros, MACs, bytes on disk and latency"])

    def summary(self, **measure_kwargs: Any) -> Table:
        """Before / after (and the control): accuracy, params, non-zeros, MACs, bytes on disk, latency
        (measured once by `comparison`, on the pruned model's device).
        Compression ratio and theoretical speed-up are reported separately (Blalock et al. 2020).
        Without ``val`` or an example input to measure on, the per-layer table instead."""
        if self.val is None and self.example is None:
            return self._layer_table()
        comparison = self.comparison(**measure_kwargs)
        rows = comparison.as_dict()
        names = list(rows)
        fields = [("accuracy", "accuracy"), ("params", "params"), ("nonzero params", "nonzero_params"),
                  ("sparsity (Linear/Conv weights)", "sparsity"), ("MACs / sample", "macs"),
                  ("nonzero MACs / sample", "nonzero_macs"), ("bytes on disk", "bytes")]
        table_rows = [[label] + [f"{rows[n][key]:.2%}" if key == "sparsity" else rows[n][key] for n in names]
                      for label, key in fields]
        if self.structured:  # deleted weights leave no zeros behind: say how many were deleted instead
            table_rows[3][names.index("pruned") + 1] = f"{self.sparsity:.2%} deleted"
        pruned = rows["pruned"]
        notes = [f"compression ratio (dense params / pruned nonzero params): {format_value(pruned['params_x'])}x",
                 f"theoretical speed-up (dense MACs / pruned nonzero MACs): {format_value(pruned['macs_x'])}x",
                 *([cost_line(self.cost)] if self.cost is not None else []), comparison.latency_line()]
        if self.history.status != "completed" and self.history.message:  # where it stopped, and what was kept
            notes.append(self.history.message)
        if self.pattern is not None:
            notes.append(f"{self.pattern} sparsity runs faster only on sparse tensor cores (CUDA, Ampere or newer: "
                         "result.export(semi_structured=True) of a half-precision model); on a CPU it computes every "
                         "zero, at dense speed")
        notes += self._dense_layers()
        return Table(["", *names], table_rows, title=self._headline(), notes=notes)

    def _dense_layers(self) -> list[str]:
        """Notes naming the layers an unstructured prune left without a mask: those an N:M pattern cannot divide,
        and those the criterion could not score (obs and wanda read only Linear and ungrouped conv inputs)."""
        if self.structured:
            return []
        misfits = list(pattern_misfits(self.dense, self.pattern))
        unscored = [name for name in prunable_weights(self.dense) if name not in self.masks and name not in misfits]
        notes = []
        if misfits:  # only a pattern has misfits
            m = parse_pattern(self.pattern)[1]  # type: ignore[index]
            notes.append(f"left dense (input channels no multiple of {m}): " + ", ".join(misfits))
        if unscored:
            notes.append(f"left dense ({self.criterion} cannot score them): " + ", ".join(unscored))
        return notes

    def _layer_table(self) -> Table:
        layers = self.layers()
        return Table(layers.columns, layers.rows, title=self._headline(),
                     notes=["pass val= (or example=) to prune to measure accuracy, MACs, bytes and latency"])

    def _headline(self) -> str:
        kind = "structured" if self.structured else "unstructured"
        how = (f", {self.pattern}" if self.pattern else "") + (", reconstructed" if self.reconstructed else "")
        resolved = sum(bool(step.get("resolved")) for step in self.trajectory)
        if self.reconstructed and 0 < resolved < len(self.trajectory):  # the gradual default: its later steps
            how += f" at {resolved} of {len(self.trajectory)} steps"
        completed = self.history.status == "completed"
        ran = self.finetune if completed else f"{self.history.num_epochs} of {self.finetune}"  # an interrupt: what ran
        tuned = f", fine-tuned {ran} epoch(s){' with KD' if self.distill else ''}" if self.finetune else ""
        status = "" if completed else f" [{self.history.status}]"
        scope_how = f" ({self.ranking} ranking, the faster when timed)" if self.ranking else ""
        if self.max_layer_sparsity is not None and self.max_layer_sparsity < 1:
            scope_how += f", at most {self.max_layer_sparsity:.0%} of a layer's channels"
        return (f"pruned {self.sparsity:.2%} of prunable weights (target {self.target:.2%}): {self.criterion}, "
                f"{kind}, {self.scope}{scope_how}, {self.schedule}{how}{tuned}{status}")



@dataclass
class SensitivityResult:
    """Accuracy of the model with one layer pruned at a time (no fine-tuning), per sparsity.

    ``accuracy[layer][i]`` is the val accuracy with ``layer`` pruned to ``sparsities[i]``; ``dense_accuracy``
    the unpruned one.
    """

    criterion: str
    structured: bool
    sparsities: list[float]
    accuracy: dict[str, list[float]]
    sizes: dict[str, int]
    dense_accuracy: float
    stopped: str | None = None  # where the stop button ended it: ``accuracy`` holds the layers measured before

    def table(self) -> Table:
        unit = "channels" if self.structured else "weights"
        rows = [[layer, self.sizes[layer], *accs] for layer, accs in self.accuracy.items()]
        return Table(["layer", unit, *[f"{s:.0%}" for s in self.sparsities]], rows,
                     title=f"sensitivity ({self.criterion}, {'structured' if self.structured else 'unstructured'}): "
                           "val accuracy with one layer pruned",
                     notes=[f"dense accuracy {format_value(self.dense_accuracy)}", *([self.stopped] if self.stopped
                                                                                    else [])])

    def plot(self) -> Any:
        """Static figure: accuracy against sparsity, one line per layer."""
        return draw(self)

    def __repr__(self) -> str:
        return self.table().to_text()

    def _repr_html_(self) -> str:
        return self.table().to_html()
