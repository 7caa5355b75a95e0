"""What does scoring cost a gradual prune on a larger training set?

kdnb's default prune with fine-tuning at >= 95 % sparsity is agp (`kdnb.engine.prune.schedule.schedules`): it re-scores
the network at each of its 30 updates, by the hessian criterion's empirical Fisher (per-sample gradients). The
statistics read the first ``calibration_samples`` samples of ``data`` (default 2048, `calibration.SAMPLES`), so
that cost stays flat as the training set grows; reading every sample at every update (``calibration_samples``
set to the training set's size, which is what kdnb did before 2026-12-02) costs 30 passes of per-sample gradients
over the whole set. Measured side by side on MNIST-1D (``kdnb.datasets``, generated offline) with a 40-256-256-10
MLP trained 3 epochs, pruned to 95 % with 10 fine-tuning epochs (no re-solve at that budget), ``SEEDS`` seeds:
wall time and val accuracy of each, next to the same schedule scored by L1 (no statistics: the fine-tuning's
own cost). Nothing is asserted here; ``tests/prune/test_prune_criteria.py`` checks that the cap reads only those samples.

    .venv/bin/python bench/prune_cost.py [--samples 25000] [--seeds 3]
"""
from __future__ import annotations

import statistics
import sys
import time
import warnings

import torch

import kdnb
from kdnb.engine.evaluate import evaluate
from kdnb.engine.loop import fit, seed_everything
from kdnb.engine.prune import prune
import report  # bench/report.py: this script's folder is on sys.path

torch.set_num_threads(1)


def _option(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


SAMPLES = int(_option("--samples", "25000"))
SEEDS = tuple(range(int(_option("--seeds", "3"))))
SPARSITY, FINETUNE = 0.95, 10


def main() -> None:
    warnings.simplefilter("ignore", RuntimeWarning)
    train, val = kdnb.datasets.load("mnist1d", batch_size=128, seed=0, num_samples=SAMPLES)
    size = len(train.dataset)
    runs = {"l1 (no statistics)": dict(criterion="l1"), "default, first 2048 samples": {},
            f"default, every sample ({size})": dict(calibration_samples=size)}
    times: dict[str, list[float]] = {label: [] for label in runs}
    accuracies: dict[str, list[float]] = {label: [] for label in runs}
    dense = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        net = kdnb.models.mlp(40, [256, 256], 10)
        fit(net, train, epochs=3, lr=1e-3, seed=seed, device="cpu", check_inputs=False)
        dense.append(evaluate(net, val)["accuracy"])
        for label, options in runs.items():
            seed_everything(seed, train)
            started = time.perf_counter()
            result = prune(net, SPARSITY, data=train, finetune=FINETUNE, seed=seed, device="cpu", **options)
            times[label].append(time.perf_counter() - started)
            accuracies[label].append(evaluate(result.model, val)["accuracy"])
    print(f"MNIST-1D, {size} training samples, MLP 40-256-256-10 (dense val {statistics.mean(dense):.4f}); "
          f"agp to {SPARSITY:.0%} over {FINETUNE} epochs, 1 thread, mean ± std over {len(SEEDS)} seeds")
    for label in runs:
        print(f"  {label:32s} {statistics.mean(times[label]):7.1f} s   val accuracy "
              f"{statistics.mean(accuracies[label]):.4f} ± {statistics.pstdev(accuracies[label]):.4f}")
    base = statistics.mean(times["l1 (no statistics)"])
    capped, every = (statistics.mean(times[label]) - base for label in list(runs)[1:])
    print(f"scoring's cost over the fine-tuning alone: {capped:.1f} s with the cap, {every:.1f} s reading every "
          f"sample ({every / max(capped, 1e-9):.1f}x)")


if __name__ == "__main__":
    report.run(main)
