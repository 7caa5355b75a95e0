"""Does distillation help? Teacher, scratch student, hard pseudo-label student and distilled student
on MNIST-1D, over several seeds.

Per seed: 4,000 labelled training signals (1,000 for validation) and a transfer set of 20,000
unlabelled signals from the same generator (Hinton et al. 2015 train the student on such a set).
Teacher ``cnn1d(width=64)`` (28 K params, 50 epochs), student ``cnn1d(width=16)`` (2.5 K params,
11x fewer), Adam lr 3e-3, T = 2, alpha = 0.1 (weight of the hard-label CE).

- scratch: the student on the labelled data only, hard labels, as many steps as the distilled run
  (``distill(baseline=True)``: about 6x the epochs, since the transfer set makes distillation longer);
- pseudo-label: the student on labelled data + transfer set, the transfer inputs labelled with the
  teacher's top-1 class (hard), the same epochs (and steps) as the distilled run;
- distilled: ``kdnb.distill`` with the transfer set (soft labels, KD, cached);
- distilled, no transfer: ``kdnb.distill`` on the labelled data alone, as many steps as scratch
  (the setting where plain KD often does not help).

Gap closure = (student - scratch) / (teacher - scratch) in val accuracy, for the distilled, the
pseudo-label and the no-transfer students. Last line: the distilled student's, mean +- std (goal >= 60 %).

    python bench/distill_quality.py [--seeds 3] [--transfer 20000] [--epochs 20] [--temperature 2]
                                    [--alpha 0.1] [--student cnn1d:16 | mlp:64,64]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import kdnb
from kdnb.engine.evaluate import evaluate, predict

TEACHER_WIDTH, LR = 64, 3e-3


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, float]:
    quiet = dict(progress=False, plot=False, device="cpu", lr=LR, seed=seed)
    train, val = kdnb.datasets.load("mnist1d", batch_size=64, seed=seed, flat=False)
    transfer = kdnb.datasets.transfer_set("mnist1d", num_samples=args.transfer, seed=seed + 1, flat=False,
                                          reference_seed=seed)
    torch.manual_seed(seed)
    teacher = kdnb.models.cnn1d(10, width=TEACHER_WIDTH)
    kdnb.train(teacher, train, epochs=args.teacher_epochs, **quiet)
    teacher.eval()
    torch.manual_seed(seed + 1000)
    student = make_student(args.student)

    result = kdnb.distill(teacher, student, train, val, transfer=transfer, temperature=args.temperature,
                          alpha=args.alpha, epochs=args.epochs, baseline=True, **quiet)
    alone = kdnb.distill(teacher, student, train, val, temperature=args.temperature, alpha=args.alpha,
                         epochs=result.settings["baseline_epochs"], **quiet)  # same steps as the scratch run

    x_transfer = transfer.dataset.x
    pseudo_labels = predict(teacher, DataLoader(x_transfer, batch_size=512))[0].argmax(1)
    x_train, y_train = train.dataset.tensors
    pseudo_data = DataLoader(TensorDataset(torch.cat([x_train, x_transfer]), torch.cat([y_train, pseudo_labels])),
                             batch_size=64, shuffle=True, generator=torch.Generator())
    pseudo = copy.deepcopy(student)
    kdnb.train(pseudo, pseudo_data, epochs=args.epochs, **quiet)

    acc = result.accuracy
    row = {"teacher": acc["teacher"], "scratch": acc["scratch"], "pseudo-label": evaluate(pseudo, val)["accuracy"],
           "distilled": acc["distilled"], "distilled, no transfer": alone.accuracy["distilled"]}
    for name in ("distilled", "pseudo-label", "distilled, no transfer"):
        row[f"gap closure, {name}"] = (row[name] - acc["scratch"]) / (acc["teacher"] - acc["scratch"])
    return row


def make_student(spec: str) -> torch.nn.Module:
    """"cnn1d:16" -> kdnb.models.cnn1d(10, width=16); "mlp:64,64" -> kdnb.models.mlp(40, [64, 64], 10)."""
    kind, _, sizes = spec.partition(":")
    if kind == "mlp":
        return kdnb.models.mlp(40, [int(w) for w in sizes.split(",")], 10)
    return kdnb.models.cnn1d(10, width=int(sizes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--transfer", type=int, default=20_000, help="unlabelled transfer-set signals")
    parser.add_argument("--epochs", type=int, default=20, help="student epochs over labelled + transfer data")
    parser.add_argument("--teacher-epochs", type=int, default=50)
    parser.add_argument("--student", default="cnn1d:16", help="cnn1d:WIDTH or mlp:W1,W2,...")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.1, help="weight of the hard-label CE (1 - alpha: KD)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and it doesn't stall on a busy machine
    start = time.perf_counter()
    rows = []
    for seed in range(args.seeds):
        rows.append(run_seed(seed, args))
        print(f"seed {seed}: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in rows[-1].items()), flush=True)
    print(f"MNIST-1D, teacher cnn1d(width={TEACHER_WIDTH}), student {args.student}, "
          f"transfer set {args.transfer:,}, T={args.temperature:g}, alpha={args.alpha:g}, {args.epochs} epochs, "
          f"{args.seeds} seeds:")
    for name in rows[0]:
        values = [100 * row[name] for row in rows]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"  {name:36s} {statistics.mean(values):5.1f} +- {spread:4.1f} %")
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread; "
          f"{time.perf_counter() - start:.0f} s")
    closures = [100 * row["gap closure, distilled"] for row in rows]
    print(f"gap closure (distilled with transfer set): {statistics.mean(closures):.1f} +- "
          f"{statistics.stdev(closures) if len(closures) > 1 else 0:.1f} % (goal >= 60 %)")


if __name__ == "__main__":
    main()
