"""The same distillation run on one process and on two (torchrun, gloo, CPU, one thread each).

    python bench/distributed.py [--seeds 3] [--epochs 4]

Teacher: cnn_bn(width=48), trained here once on digits images (1x8x8). Student: cnn_bn(width=32), 66k
parameters, whose step is compute-bound (~45-60 ms for a batch of 64 on one thread; the gradient all-reduce of
260 kB takes ~2 ms). Each seed distils it with cached soft labels, global batch 128 (64 per rank on two), once
with ``torchrun --nproc_per_node=1`` and once with ``--nproc_per_node=2``, and reports

- val accuracy after training: two processes should land within the one-process seed spread;
- training throughput, samples/s = samples trained / the epochs' time (the slowest rank's, validation off),
  and the ratio 2 procs / 1 proc (goal >= 1.6x on 2 free cores; other load on the machine lowers it);
- CPU seconds per sample of all processes together: the work the split adds (all-reduces, smaller batches),
  which, unlike wall time, a busy machine does not distort much.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import kdnb
from kdnb.engine import distributed
from kdnb.engine.events import Callback

ROOT = Path(__file__).resolve().parent.parent
BATCH = 128  # global: 64 per rank on two processes


class CpuClock(Callback):
    """This process's CPU seconds inside the training run (the soft-label cache, built before it, left out)."""

    def on_run_start(self, state):
        self.started = time.process_time()

    def on_run_end(self, state):
        self.seconds = time.process_time() - self.started


def worker(args: argparse.Namespace) -> None:
    """One rank: distil, then (rank 0) write accuracy and throughput."""
    torch.set_num_threads(1)
    train, val = kdnb.datasets.load("digits", batch_size=BATCH, seed=args.seed, flat=False)
    teacher = kdnb.load(args.teacher).eval()
    torch.manual_seed(args.seed)
    student = kdnb.models.cnn_bn(width=32)
    clock = CpuClock()
    res = kdnb.distill(teacher, student, train, epochs=args.epochs, lr=2e-3, cache=True, seed=args.seed,
                       progress=False, callbacks=[clock])
    seconds = sum(res.history["time_s"])
    samples = args.epochs * len(train.dataset)
    cpu = torch.tensor([clock.seconds], dtype=torch.float64)
    if distributed.initialized():
        torch.distributed.all_reduce(cpu)  # all ranks' CPU seconds
    if distributed.is_main_process():
        accuracy = kdnb.evaluate(res.student, val)["accuracy"]
        result = {"accuracy": accuracy, "samples_per_s": samples / seconds, "cpu_s_per_sample": float(cpu) / samples,
                  "world": distributed.world_size()}
        Path(args.out).write_text(json.dumps(result))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(procs: int, seed: int, epochs: int, teacher: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "KDNB_DEVICE": "cpu"}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", __file__, "--worker", "--seed", str(seed), "--epochs", str(epochs),
               "--teacher", str(teacher), "--out", str(out)]
    for attempt in (1, 2):  # a launch that dies is retried once, and said so
        if subprocess.run(command, env=env, timeout=900).returncode == 0:
            return json.loads(out.read_text())
        print(f"torchrun --nproc_per_node={procs} (seed {seed}) failed, attempt {attempt} of 2", flush=True)
    raise SystemExit("torchrun failed twice")


def train_teacher(path: Path) -> float:
    torch.set_num_threads(1)
    train, val = kdnb.datasets.load("digits", batch_size=64, seed=0, flat=False)
    torch.manual_seed(0)
    teacher = kdnb.models.cnn_bn(width=48)
    kdnb.train(teacher, train, epochs=5, lr=3e-3, progress=False, device="cpu")
    kdnb.save(teacher, path)
    return kdnb.evaluate(teacher, val)["accuracy"]


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        teacher = Path(tmp) / "teacher.kdnb"
        print(f"teacher cnn_bn(width=48): val accuracy {train_teacher(teacher):.4f}")
        results: dict[int, list[dict]] = {1: [], 2: []}
        for seed in range(args.seeds):
            for procs in (1, 2):
                result = launch(procs, seed, args.epochs, teacher, Path(tmp) / f"{procs}-{seed}.json")
                results[procs].append(result)
                print(f"seed {seed}, {procs} process(es): val accuracy {result['accuracy']:.4f}, "
                      f"{result['samples_per_s']:.1f} samples/s, {1e3 * result['cpu_s_per_sample']:.3f} CPU ms "
                      "per sample (all processes)", flush=True)
    one, two = ([r["accuracy"] for r in results[p]] for p in (1, 2))
    speed = {p: [r["samples_per_s"] for r in results[p]] for p in (1, 2)}
    ratios = [b / a for a, b in zip(speed[1], speed[2])]
    low, high = min(one), max(one)
    mean1, std1 = statistics.mean(one), statistics.stdev(one) if len(one) > 1 else 0.0
    print(f"\nstudent cnn_bn(width=32), {args.epochs} epochs of digits, global batch {BATCH}, {args.seeds} seeds")
    print(f"val accuracy  1 process: {spread(one)}   2 processes: {spread(two)}")
    within = abs(statistics.mean(two) - mean1) <= max(2 * std1, high - low)
    print(f"2-process mean within the 1-process spread (|diff| <= max(2 std, range)): {within}")
    print(f"samples/s     1 process: {spread(speed[1])}   2 processes: {spread(speed[2])}")
    print(f"speed-up 2 vs 1 process: {spread(ratios)} (goal >= 1.6; load average now "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: other work on the machine lowers it)")
    cpu = {p: statistics.mean(r["cpu_s_per_sample"] for r in results[p]) for p in (1, 2)}
    print(f"CPU work per sample, 2 processes together / 1 process: {cpu[2] / cpu[1]:.3f}; on 2 free cores, and if "
          f"waiting in collectives burns no CPU, that bounds the speed-up at 2 / {cpu[2] / cpu[1]:.3f} = "
          f"{2 * cpu[1] / cpu[2]:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--teacher", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    worker(arguments) if arguments.worker else main(arguments)
