"""Static figures of pruning: what each layer kept, accuracy against sparsity, and layer sensitivity."""
from __future__ import annotations

from typing import Any

from kdnb.engine.results import drawer
from kdnb.engine.prune.result import PruneResult, SensitivityResult
from kdnb.plots.figure import new_figure


def _figure(columns: int) -> tuple[Any, list[Any]]:
    figure = new_figure()
    return figure, list(figure.subplots(1, columns, squeeze=False)[0])


@drawer(PruneResult)
def plot_prune(result: PruneResult) -> Any:
    """Left: weights kept / removed per layer. Right: val accuracy against sparsity at each pruning step
    (before and after fine-tuning) and, per fine-tuning epoch, the accuracy at the sparsity then in force."""
    figure, (layers, curve) = _figure(2)
    rows = result.layers().rows  # [layer, weights, kept, sparsity]: the result's own numbers
    names = [row[0] for row in rows]
    kept = [row[2] for row in rows]
    layers.barh(names, kept, color="tab:blue", label="kept")
    layers.barh(names, [row[1] - row[2] for row in rows], left=kept, color="lightgray", label="removed")
    for row, (weights, kept_here) in enumerate(zip([row[1] for row in rows], kept)):
        # the kept share is often a sliver of the bar: say it in numbers beside it
        layers.text(weights, row, f" {kept_here:,} kept", va="center", ha="left", fontsize=8)
    layers.set_xlim(0, 1.3 * max((row[1] for row in rows), default=1))
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    layers.xaxis.set_major_locator(MaxNLocator(4))  # counts up to millions: few ticks, in thousands
    layers.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value / 1000:g}k" if value >= 1000
                                                   else f"{value:g}"))
    layers.invert_yaxis()
    layers.set_xlabel("weights")
    layers.set_title(f"{result.sparsity:.1%} of prunable weights removed", fontsize=10)
    layers.legend(fontsize=8, loc="lower right")

    steps = [t for t in result.trajectory if t.get("val_acc") is not None]
    if steps:
        curve.plot([100 * t["sparsity"] for t in steps], [100 * t["val_acc"] for t in steps], "o--", color="tab:red",
                   label="right after pruning")
    tuned = [t for t in steps if t.get("finetuned_acc") is not None]
    if tuned:
        curve.plot([100 * t["sparsity"] for t in tuned], [100 * t["finetuned_acc"] for t in tuned], "o-",
                   color="tab:green",
                   label="after fine-tuning")
    epochs = result.history.epochs
    if result.schedule == "agp" and "val_acc" in epochs and "sparsity" in epochs:
        curve.plot([100 * s for s in epochs["sparsity"]], [100 * a for a in epochs["val_acc"]], "s-", color="tab:green",
                   label="end of each epoch")
    if result.dense_accuracy is not None:
        curve.axhline(100 * result.dense_accuracy, color="gray", linestyle=":", label="dense")
    # Percent, as in every kdnb chart (the live chart, the explorers).
    curve.set_xlabel("sparsity (% of prunable weights removed)")
    curve.set_ylabel("validation accuracy (%)")
    curve.set_title(f"{result.criterion}, {'structured' if result.structured else 'unstructured'}, "
                    f"{result.schedule}", fontsize=10)
    low, high = curve.get_ylim()
    curve.set_ylim(max(0.0, min(low, high - 5)), min(100.0, max(high, low + 5)))  # a percent axis: never past 100
    if curve.lines:
        curve.legend(fontsize=8, loc="best")
    figure.tight_layout()
    return figure


@drawer(SensitivityResult)
def plot_sensitivity(result: SensitivityResult) -> Any:
    """Val accuracy against sparsity, one line per layer pruned alone; the dense accuracy dotted."""
    figure, (axis,) = _figure(1)
    for layer, accuracy in result.accuracy.items():
        axis.plot([100 * s for s in result.sparsities], [100 * a for a in accuracy], "o-", label=layer)
    axis.axhline(100 * result.dense_accuracy, color="gray", linestyle=":", label="dense")
    axis.set_xlabel("% of the layer's " + ("channels" if result.structured else "weights") + " removed")
    axis.set_ylabel("validation accuracy (%)")
    axis.set_title(f"sensitivity per layer ({result.criterion})", fontsize=10)
    axis.set_ylim(bottom=0, top=100)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # outside the data
    figure.tight_layout()
    return figure
