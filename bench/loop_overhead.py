"""kdnb's training loop vs a hand-written PyTorch loop doing the same math on the same data.

Both: Adam(lr=1e-3), cross-entropy, the same seed and shuffling, per-step loss read back and
per-epoch train accuracy (what any tutorial loop logs). kdnb adds events, history, the
input checks and the progress bar (on, as a user sees it). Timed in one process, alternating
A/B, median over rounds. Last line: the ratio kdnb / hand-written (goal <= 1.03).

    python bench/loop_overhead.py [--rounds 7] [--epochs 3] [--threads 1] [--clock wall|cpu]

``--clock cpu`` times the process's CPU time instead of the wall clock: on a shared, loaded machine the
waits for a core are left out (the ratio still counts every cycle kdnb adds).

The live chart's cost (a notebook-only subscriber) is measured by bench/chart_overhead.py.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import kdnb
import report  # bench/report.py: this script's folder is on sys.path


def hand_written(model, data, epochs, seed):
    torch.manual_seed(seed)
    data.generator.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        running, correct, seen = 0.0, 0, 0
        for x, y in data:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item()
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += y.numel()


def with_kdnb(model, data, epochs, seed):
    kdnb.train(model, data, epochs=epochs, seed=seed, device="cpu", progress=True, plot=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (2 stall when the cores are shared)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: time.perf_counter; cpu: time.process_time (a loaded, shared machine)")
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    data, _ = kdnb.datasets.load("digits", batch_size=64, seed=0)
    make = lambda: kdnb.models.mlp(64, [256, 256], 10)  # noqa: E731
    times = {"hand-written": [], "kdnb": []}
    sys.stderr = open(os.devnull, "w")  # the progress bar draws to stderr; keep the report readable
    for round_ in range(args.rounds + 1):  # round 0 warms up both
        for name in (("hand-written", "kdnb") if round_ % 2 else ("kdnb", "hand-written")):
            torch.manual_seed(0)
            model = make()
            start = clock()
            if name == "kdnb":
                with_kdnb(model, data, args.epochs, 0)
            else:
                hand_written(model, data, args.epochs, 0)
            if round_:
                times[name].append(clock() - start)
    sys.stderr = sys.__stderr__
    steps = args.epochs * len(data)
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:13s} median {median * 1000:8.1f} ms for {steps} steps ({median / steps * 1e6:6.0f} us/step)")
    ratio = statistics.median(times["kdnb"]) / statistics.median(times["hand-written"])
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.clock} clock, load {os.getloadavg()[0]:.1f}")
    print(f"ratio kdnb+progress / hand-written: {ratio:.3f}")


if __name__ == "__main__":
    report.run(main)
