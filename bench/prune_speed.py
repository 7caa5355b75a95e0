"""Does pruning make a model faster and smaller? Measured side by side, in one process, alternating.

Structured: a small BatchNorm CNN (kdnb.models.cnn_bn, width 32, 3x32x32 inputs, batch 32, 2 threads),
50 % of its channels pruned twice: by Torch-Pruning's plain MetaPruner (L1 magnitude), and by kdnb
(structured, local scope, to the same weight sparsity), exported for inference (`kdnb.engine.prune.export`:
BatchNorm folded into the convs, channels-last weights). Goal: kdnb's speed-up over dense >= 1.2x TP's.
For context, the dense model exported the same way is timed too: the part of the gain that is export alone.

Unstructured: the same CNN at 90 % sparsity: latency with torch's masks and after `make_permanent`
(goal >= 1.00x dense), and the `kdnb.save` file size (goal >= 5x smaller).

    .venv/bin/python bench/prune_speed.py

Timings are medians of many rounds in which every model runs once, so machine noise hits all alike.
"""
from __future__ import annotations

import copy
import statistics
import tempfile
from pathlib import Path

import torch
import torch_pruning as tp

import kdnb
from kdnb.engine.prune import export, make_permanent, prune
from kdnb.engine.prune.graph.groups import prunable_weights
from kdnb.engine.prune.cut.masks import clone
from timing import alternating_times  # bench/timing.py: this script's folder is on sys.path
import report  # bench/report.py: this script's folder is on sys.path

torch.set_num_threads(2)
ROUNDS = 60


def latencies(models: dict[str, torch.nn.Module], x: torch.Tensor, rounds: int = ROUNDS) -> dict[str, float]:
    """Median ms per forward of each model, all models timed in every round (alternating)."""
    return {name: statistics.median(t) for name, t in alternating_times(models, x, rounds).items()}


def macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    return kdnb.measure(model, x[:1], repeats=1, warmup=0).macs


def weights(model: torch.nn.Module) -> int:
    return sum(w.numel() for w in prunable_weights(model).values())


def main() -> None:
    torch.manual_seed(0)
    dense = kdnb.models.cnn_bn(10, width=32, in_channels=3).eval()
    x = torch.randn(32, 3, 32, 32)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        dense.train()
        for _ in range(3):
            dense(torch.randn(32, 3, 32, 32))
        dense.eval()

    tp_model = copy.deepcopy(dense)
    pruner = tp.pruner.MetaPruner(tp_model, x[:1], importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=0.5, ignored_layers=[tp_model[-1]])
    pruner.step()
    sparsity = 1 - weights(tp_model) / weights(dense)
    result = prune(dense, sparsity, structured=True, scope="local", example=x[:1])
    ours = result.export()  # masks and BatchNorm folded, channels-last, eval mode

    models = {"dense": dense, "tp": tp_model, "kdnb": ours, "dense exported": export(dense)}
    with torch.no_grad():
        assert torch.allclose(result.model.eval()(x), ours(x), atol=1e-4), "BatchNorm folding changed the outputs"
    ms = latencies(models, x)
    print(f"structured, {sparsity:.1%} of prunable weights ({weights(tp_model):,} of {weights(dense):,} kept by TP, "
          f"{weights(ours):,} by kdnb); batch 32, 3x32x32, {torch.get_num_threads()} threads")
    for name in models:
        print(f"  {name:14s} {ms[name]:7.2f} ms   speed-up {ms['dense'] / ms[name]:.2f}x   "
              f"MACs {macs(models[name], x) / 1e6:.2f} M ({macs(dense, x) / macs(models[name], x):.2f}x fewer)")

    masked = prune(dense, 0.9, scope="local").model
    permanent = make_permanent(clone(masked))
    ms_u = latencies({"dense": dense, "masked": masked, "permanent": permanent}, x)
    with tempfile.TemporaryDirectory() as folder:
        dense_bytes = kdnb.save(dense, Path(folder) / "dense.kdnb").stat().st_size
        pruned_bytes = kdnb.save(masked, Path(folder) / "pruned.kdnb").stat().st_size
    print(f"unstructured 90%: masked {ms_u['dense'] / ms_u['masked']:.2f}x dense speed, after make_permanent "
          f"{ms_u['dense'] / ms_u['permanent']:.2f}x (goal >= 1.00x); kdnb.save file {dense_bytes:,} -> "
          f"{pruned_bytes:,} bytes, {dense_bytes / pruned_bytes:.2f}x smaller (goal >= 5x)")
    ratio = (ms["dense"] / ms["kdnb"]) / (ms["dense"] / ms["tp"])
    print(f"structured speed-up: kdnb {ms['dense'] / ms['kdnb']:.2f}x vs Torch-Pruning {ms['dense'] / ms['tp']:.2f}x; "
          f"kdnb/TP = {ratio:.2f}x (goal >= 1.2x)")


if __name__ == "__main__":
    report.run(main)
