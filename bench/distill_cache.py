"""Epoch time of distillation with cached soft labels vs a live teacher vs training the student alone.

Teacher: an MLP of three 2048-unit layers (~8.5 M params); student: one 32-unit layer (~0.8 K params).
Data: 8,000 synthetic samples, batch 64, no augmentation (so cache="auto" caches). All three runs use
the same loop, Adam, seed and shuffling; the epoch time is the loop's own ``time_s`` (no validation),
median over rounds, measured in one process, alternating the order. The cache's one-off teacher
pass is printed apart. Last line: cached epoch / student-only epoch (goal <= 1.10).

    python bench/distill_cache.py [--rounds 5] [--epochs 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import kdnb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    data, _ = kdnb.datasets.load("synthetic", batch_size=64, seed=0, num_samples=10_000)
    torch.manual_seed(0)
    teacher = kdnb.models.mlp(20, [2048, 2048, 2048], 4).eval()  # timing only: its weights don't matter
    student = kdnb.models.mlp(20, [32], 4)
    quiet = dict(progress=False, plot=False, device="cpu", epochs=args.epochs)

    def student_only() -> list[float]:
        return kdnb.train(kdnb.models.mlp(20, [32], 4), data, **quiet)["time_s"]

    def cached() -> list[float]:
        return kdnb.distill(teacher, student, data, cache=True, **quiet).history["time_s"]

    def live() -> list[float]:
        return kdnb.distill(teacher, student, data, cache=False, **quiet).history["time_s"]

    runs = {"student only": student_only, "cached": cached, "live teacher": live}
    epoch_times: dict[str, list[float]] = {name: [] for name in runs}
    setup_times: list[float] = []
    for round_ in range(args.rounds + 1):  # round 0 warms up all three
        order = list(runs) if round_ % 2 else list(reversed(runs))
        for name in order:
            start = time.perf_counter()
            times = runs[name]()
            if round_:
                epoch_times[name] += times
                if name == "cached":  # distill's one-off work: copies, checks, the teacher's pass over the data
                    setup_times.append(time.perf_counter() - start - sum(times))
    medians = {name: statistics.median(values) for name, values in epoch_times.items()}
    steps = len(data)
    for name, median in medians.items():
        print(f"{name:13s} epoch median {median * 1000:8.1f} ms ({median / steps * 1e6:6.0f} us/step, {steps} steps)")
    print(f"cache setup (teacher labels {len(data.dataset)} samples once, plus checks): "
          f"median {statistics.median(setup_times) * 1000:.1f} ms")
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"ratio live teacher / student only: {medians['live teacher'] / medians['student only']:.3f}")
    print(f"ratio cached / student only: {medians['cached'] / medians['student only']:.3f}")


if __name__ == "__main__":
    main()
