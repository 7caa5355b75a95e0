"""The same distillation run on one process and on two (torchrun, gloo, CPU, one thread each).

    python bench/distributed.py [--seeds 3] [--epochs 8] [--modes consistent cached]

Teacher: cnn_bn(width=48), trained here once on digits images (1x8x8). Student: cnn_bn(width=32), 66k
parameters. Two distillations, each per seed once with ``torchrun --nproc_per_node=1`` and once with
``--nproc_per_node=2``, global batch 512 (256 per rank on two; at 128, 64 per rank, the fixed per-step work
that every rank repeats -- the optimizer update, the loop, the small all-reduces -- was 25 % more CPU per
sample on two processes and the speed-up 1.36x on the quiet box; at 512 it is under 10 %), lr 4e-3:

- "consistent": consistent teaching (Beyer et al. 2022; ``augment=`` Gaussian jitter of 0.1 std, which keeps
  8 epochs enough): the teacher runs live on each rank's fresh views. Its step is compute-bound (some 40 %
  of it the teacher's forward, which needs no gradient sync), so it is the bench's headline: what two
  processes buy when each step is mostly arithmetic.
- "cached": cached soft labels (the cache built sharded, each rank labelling half the samples): the student's
  step alone, ~50 ms for 256 samples, with one gradient all-reduce of 260 kB and one of the loss terms a step.

Per run it reports

- val accuracy after training: two processes should land within the one-process seed spread;
- training throughput, samples/s = samples trained / the epochs' time (the slowest rank's, validation off),
  and the ratio 2 procs / 1 proc (goal >= 1.6x on 2 free cores; other load on the machine lowers it);
- CPU seconds per sample of all processes together (and of their main threads): the work the split adds
  (all-reduces, smaller batches), which, unlike wall time, a busy machine distorts much less.
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
import report  # bench/report.py: this script's folder is on sys.path

ROOT = Path(__file__).resolve().parent.parent
BATCH = 512  # global: 256 per rank on two processes


class CpuClock(Callback):
    """This process's CPU seconds inside the training run (the soft-label cache, built before it, left out),
    all its threads (gloo's and DDP's too) and its main thread alone."""

    def on_run_start(self, state):
        self.started = (time.process_time(), time.thread_time())

    def on_run_end(self, state):
        self.seconds = (time.process_time() - self.started[0], time.thread_time() - self.started[1])


def jitter(x: torch.Tensor) -> torch.Tensor:
    """A fresh random view of every batch: Gaussian noise of 0.1 (the inputs are standardised)."""
    return x + 0.1 * torch.randn_like(x)


def worker(args: argparse.Namespace) -> None:
    """One rank: distil, then (rank 0) write accuracy and throughput."""
    torch.set_num_threads(1)
    train, val = kdnb.datasets.load("digits", batch_size=BATCH, seed=args.seed, flat=False)
    teacher = kdnb.load(args.teacher).eval()
    torch.manual_seed(args.seed)
    student = kdnb.models.cnn_bn(width=32)
    clock = CpuClock()
    how = {"cached": dict(cache=True), "consistent": dict(augment=jitter)}[args.mode]
    res = kdnb.distill(teacher, student, train, epochs=args.epochs, lr=4e-3, seed=args.seed, progress=False,
                       callbacks=[clock], **how)
    seconds = sum(res.history["time_s"])
    samples = args.epochs * len(train.dataset)
    cpu = torch.tensor(clock.seconds, dtype=torch.float64)
    if distributed.initialized():
        torch.distributed.all_reduce(cpu)  # all ranks' CPU seconds
    if distributed.is_main_process():
        accuracy = kdnb.evaluate(res.student, val)["accuracy"]
        result = {"accuracy": accuracy, "samples_per_s": samples / seconds, "cpu_s_per_sample": float(cpu[0]) / samples,
                  "main_thread_s_per_sample": float(cpu[1]) / samples, "world": distributed.world_size()}
        Path(args.out).write_text(json.dumps(result))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(procs: int, mode: str, seed: int, epochs: int, teacher: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "KDNB_DEVICE": "cpu"}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", __file__, "--worker", "--mode", mode, "--seed", str(seed),
               "--epochs", str(epochs), "--teacher", str(teacher), "--out", str(out)]
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
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        teacher = Path(tmp) / "teacher.kdnb"
        print(f"teacher cnn_bn(width=48): val accuracy {train_teacher(teacher):.4f}")
        for mode in args.modes:
            results: dict[int, list[dict]] = {1: [], 2: []}
            for seed in range(args.seeds):
                for procs in (1, 2):
                    result = launch(procs, mode, seed, args.epochs, teacher, Path(tmp) / f"{mode}-{procs}-{seed}.json")
                    results[procs].append(result)
                    print(f"{mode}, seed {seed}, {procs} process(es): val accuracy {result['accuracy']:.4f}, "
                          f"{result['samples_per_s']:.1f} samples/s, {1e3 * result['cpu_s_per_sample']:.3f} CPU ms "
                          f"per sample (all processes; main threads {1e3 * result['main_thread_s_per_sample']:.3f})",
                          flush=True)
            report(mode, args, results)
    print(f"\nbench time {time.perf_counter() - started:.0f} s; machine: {os.cpu_count()} cores, torch "
          f"{torch.__version__}, load average {os.getloadavg()[0]:.1f} (other work on the machine lowers the speed-up)")


def report(mode: str, args: argparse.Namespace, results: dict[int, list[dict]]) -> None:
    one, two = ([r["accuracy"] for r in results[p]] for p in (1, 2))
    speed = {p: [r["samples_per_s"] for r in results[p]] for p in (1, 2)}
    ratios = [b / a for a, b in zip(speed[1], speed[2])]
    low, high = min(one), max(one)
    mean1, std1 = statistics.mean(one), statistics.stdev(one) if len(one) > 1 else 0.0
    print(f"\n{mode}: student cnn_bn(width=32), {args.epochs} epochs of digits, global batch {BATCH}, {args.seeds} seeds")
    print(f"  val accuracy  1 process: {spread(one)}   2 processes: {spread(two)}")
    within = abs(statistics.mean(two) - mean1) <= max(2 * std1, high - low)
    print(f"  2-process mean within the 1-process spread (|diff| <= max(2 std, range)): {within}")
    print(f"  samples/s     1 process: {spread(speed[1])}   2 processes: {spread(speed[2])}")
    print(f"  speed-up 2 vs 1 process: {spread(ratios)} (goal >= 1.6; load average now {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores)")
    cpu = {p: statistics.mean(r["cpu_s_per_sample"] for r in results[p]) for p in (1, 2)}
    main = {p: statistics.mean(r["main_thread_s_per_sample"] for r in results[p]) for p in (1, 2)}
    print(f"  CPU work per sample, 2 processes together / 1 process: {cpu[2] / cpu[1]:.3f} (main threads "
          f"{main[2] / main[1]:.3f}); on 2 free cores, and if waiting in collectives burns no CPU, that bounds the "
          f"speed-up at 2 / {cpu[2] / cpu[1]:.3f} = {2 * cpu[1] / cpu[2]:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--modes", nargs="+", choices=("consistent", "cached"), default=["consistent", "cached"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="cached", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--teacher", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    if "--worker" in sys.argv:  # one rank, started by main() under torchrun: it writes no section
        worker(parser.parse_args())
    else:
        report.run(lambda: main(parser.parse_args()))
