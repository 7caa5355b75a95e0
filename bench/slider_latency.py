"""How fast the sparsity explorer answers a slider move, on the tutorials' models.

A move sets ``explorer.slider.value`` exactly as the browser does; "numbers" is the time until the
table of accuracy / non-zero params / bytes is updated (what the person waits for), "with curve"
until the accuracy-vs-sparsity picture is redrawn too; "cpu" is the process CPU time of the
numbers, which a busy shared machine inflates less than wall time. The scores of each criterion are computed
once, on its first use (timed apart: "scoring"). Median over the moves. Last line: the worst
median move-to-numbers over all settings (goal <= 150 ms).

    python bench/slider_latency.py [--moves 12] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import torch

import kdnb
from kdnb.widgets import SparsityExplorer
import report  # bench/report.py: this script's folder is on sys.path

SETTINGS = [("l1", "unstructured"), ("taylor", "unstructured"), ("l1", "structured"), ("taylor", "structured")]


def tutorial_models():
    """(name, model, train, val): the tutorials' teacher and the reference networks, briefly trained."""
    digits, digits_val = kdnb.datasets.load("digits", batch_size=64, seed=0)
    images, images_val = kdnb.datasets.load("digits", batch_size=64, seed=0, flat=False)
    signals, signals_val = kdnb.datasets.load("mnist1d", batch_size=64, seed=0, flat=False, num_samples=2000)
    for name, model, train, val in [
        ("digits mlp 256-256", kdnb.models.mlp(64, [256, 256], 10), digits, digits_val),  # the tutorials' teacher
        ("digits lenet_300_100", kdnb.models.lenet_300_100(64, 10), digits, digits_val),
        ("mnist1d cnn1d", kdnb.models.cnn1d(10), signals, signals_val),
        ("digits cnn_bn", kdnb.models.cnn_bn(10, width=16), images, images_val),
    ]:
        torch.manual_seed(0)
        kdnb.train(model, train, val, epochs=1, progress=False, plot=False)
        yield name, model, train, val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1, as the tutorials set for Binder; 2 threads on a shared 2-core "
                             "machine make a conv evaluation 4-5x slower)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # "a layer keeps one weight" at 99 %: shown in the widget, not here
    positions = [round(0.99 * (i + 1) / args.moves, 2) for i in range(args.moves)]
    worst = 0.0
    for name, model, train, val in tutorial_models():
        explorer = SparsityExplorer(model, val, data=train, namespace={})
        shown: list[tuple[float, float]] = []
        explorer.table.observe(lambda _: shown.append((time.perf_counter(), time.process_time())), names="value")
        for criterion, mode in SETTINGS:
            start = time.perf_counter()
            explorer.criterion.value, explorer.mode.value = criterion, mode
            scoring = time.perf_counter() - start
            numbers, cpu, total = [], [], []
            for position in positions[::2] + positions[1::2]:  # jumps back and forth, as a hand does
                shown.clear()
                start, start_cpu = time.perf_counter(), time.process_time()
                explorer.slider.value = position
                total.append(time.perf_counter() - start)
                numbers.append(shown[0][0] - start)
                cpu.append(shown[0][1] - start_cpu)
            median = statistics.median(numbers)
            worst = max(worst, median)
            print(f"{name:21s} {criterion:6s} {mode:12s}  scoring {scoring * 1000:6.0f} ms | move: numbers "
                  f"{median * 1000:6.1f} ms (cpu {statistics.median(cpu) * 1000:5.1f} ms), with curve "
                  f"{statistics.median(total) * 1000:6.1f} ms")
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"worst median move-to-numbers: {worst * 1000:.1f} ms (goal <= 150 ms)")


if __name__ == "__main__":
    report.run(main)
