"""Epoch time of distillation with cached soft labels vs a live teacher vs training the student alone.

Teacher: an MLP of three 2048-unit layers (~8.5 M params). Two students: a realistic small MLP of two
256-unit layers (~72 K params, 117x smaller) and a toy one of 32 units (~0.8 K params), where the
few extra tensor ops of the KD loss are a visible share of a step. Data: 10,000 synthetic samples
(8,000 for training), batch 64, no augmentation (so cache="auto" caches). All runs use the same
loop, Adam, seed and shuffling; the epoch time is the loop's own ``time_s`` (no validation), median
over rounds, measured in one process, alternating the order; beside it the epoch's CPU time (this
thread's, `time.thread_time`), which other work on a shared machine distorts far less than wall time.
The cache's one-off teacher pass is printed apart. Beside them, consistent teaching (``augment=``: a fresh random view of every batch,
so the teacher must run live on it; here Gaussian jitter) costs what the live teacher does plus the
augmentation. Last lines: cached epoch / student-only epoch per student (goal <= 1.10), wall and CPU.
The cached loader reads a TensorDataset with one gather per tensor per batch, while the student-only
run uses the user's loader, which collates sample by sample: on this data that saving pays for the
KD loss's own extra tensor ops (7 more autograd nodes than cross-entropy's 2, ~0.1-0.2 ms a step).

    python bench/distill_cache.py [--rounds 3] [--epochs 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import kdnb
from kdnb.engine.events import Callback
import report  # bench/report.py: this script's folder is on sys.path

STUDENTS = {"mlp [256, 256]": [256, 256], "mlp [32]": [32]}


def jitter(x: torch.Tensor) -> torch.Tensor:
    return x + 0.1 * torch.randn_like(x)


class EpochCpu(Callback):
    """This thread's CPU seconds of each epoch (from the run's start, then from the last epoch's end)."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_run_start(self, state):
        self.last = time.thread_time()

    def on_epoch_end(self, state):
        now = time.thread_time()
        self.seconds.append(now - self.last)
        self.last = now


def timed(run) -> tuple[list[float], list[float]]:
    """A run's epoch wall times (the loop's ``time_s``) and CPU times."""
    clock = EpochCpu()
    return run([clock]), clock.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)  # two threads stall badly when other work shares the cores
    data, _ = kdnb.datasets.load("synthetic", batch_size=64, seed=0, num_samples=10_000)
    torch.manual_seed(0)
    teacher = kdnb.models.mlp(20, [2048, 2048, 2048], 4).eval()  # timing only: its weights don't matter
    quiet = dict(progress=False, plot=False, device="cpu", epochs=args.epochs)
    ratios: dict[str, tuple[float, float, float]] = {}
    for label, hidden in STUDENTS.items():
        student = kdnb.models.mlp(20, hidden, 4)
        runs = {
            "student only": lambda c: kdnb.train(kdnb.models.mlp(20, hidden, 4), data, callbacks=c, **quiet)["time_s"],
            "cached": lambda c: kdnb.distill(teacher, student, data, cache=True, callbacks=c, **quiet).history["time_s"],
            "live teacher": lambda c: kdnb.distill(teacher, student, data, cache=False, callbacks=c,
                                                   **quiet).history["time_s"],
            "consistent": lambda c: kdnb.distill(teacher, student, data, augment=jitter, callbacks=c,
                                                 **quiet).history["time_s"],
        }
        wall: dict[str, list[float]] = {name: [] for name in runs}
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        setup_times: list[float] = []
        for round_ in range(args.rounds + 1):  # round 0 warms up all of them
            for name in (list(runs) if round_ % 2 else list(reversed(runs))):
                start = time.perf_counter()
                times, cpu_times = timed(runs[name])
                if round_:
                    wall[name] += times
                    cpu[name] += cpu_times
                    if name == "cached":  # distill's one-off work: copies, checks, the teacher's pass over the data
                        setup_times.append(time.perf_counter() - start - sum(times))
        medians = {name: statistics.median(values) for name, values in wall.items()}
        cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
        fastest = {name: min(values) for name, values in cpu.items()}  # the epoch other work disturbed least
        print(f"student {label} ({sum(p.numel() for p in student.parameters()):,} params), "
              f"teacher {sum(p.numel() for p in teacher.parameters()):,} params, {len(data)} steps per epoch:")
        for name, median in medians.items():
            print(f"  {name:13s} epoch median {median * 1000:8.1f} ms ({median / len(data) * 1e6:6.0f} us/step), "
                  f"CPU median {cpu_medians[name] * 1000:7.1f} ms (fastest {fastest[name] * 1000:7.1f})")
        print(f"  cache setup (the teacher labels {len(data.dataset):,} samples once, plus checks): "
              f"median {statistics.median(setup_times) * 1000:.1f} ms")
        print(f"  ratio live teacher / student only: {medians['live teacher'] / medians['student only']:.3f}; "
              f"consistent teaching (augment=, live teacher) / student only: "
              f"{medians['consistent'] / medians['student only']:.3f}")
        ratios[label] = (medians["cached"] / medians["student only"],
                         cpu_medians["cached"] / cpu_medians["student only"], fastest["cached"] / fastest["student only"])
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("ratio cached / student only, wall (medians): " + ", ".join(f"{w:.3f} ({label})"
                                                                   for label, (w, _, _) in ratios.items()))
    print("ratio cached / student only, CPU (medians; fastest epochs): " + ", ".join(
        f"{c:.3f}; {f:.3f} ({label})" for label, (_, c, f) in ratios.items()))


if __name__ == "__main__":
    report.run(main)
