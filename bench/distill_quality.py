"""Does distillation help, and do the *soft* labels help? Teacher, fair baselines and distilled students
over several seeds, in the regimes the README and tutorial 01 quote.

Per seed and regime: the teacher is trained on the labelled data (cosine lr, or the README's constant
lr where the regime says ``teacher_lr``); the student starts from one seeded initialisation shared by
every run below, all with the same budget (steps), Adam, lr and schedule (cosine unless the regime says):

- scratch: hard labels on the labelled data, as many steps as the distilled run (`baseline=True`);
- pseudo: the teacher's top-1 class instead of its soft labels, on the same inputs (`baseline="pseudo"`);
- KD: `kdnb.distill(method="kd")`; DKD: `method="dkd"` (with the transfer set, where the regime has one);
- consistent teaching (CT): KD with ``augment=`` (and ``mixup=``), teacher live on every view, beside its
  own scratch and pseudo students trained on the same views.

Gap closure = (student - scratch) / (teacher - scratch) in val accuracy; CT's is over its own
augmented scratch student. Per regime: mean +- std and minimum over the seeds, and whether the soft
labels beat the hard pseudo-labels by more than one std of the seeds.

Two regimes give the student inputs the labels do not cover (Hinton et al. 2015): "flagship" (the README
and quickstart example) has 100 labelled digits and the rest of the training inputs unlabelled, the
teacher trained on all of them (scratch and pseudo see the same 100 labels / the same inputs);
"omitted-class" is their omitted-3 experiment: the student's data has no 3 at all and alpha=0 (soft
labels only, the labels unused), so only the soft labels can teach it what a 3 is; the class-3 rows are
the val accuracy on the 3s.

    python bench/distill_quality.py [--seeds 5 | --seed-list 0 3] [--regime flagship no-help] [--skip dkd ct]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

import kdnb
import report  # bench/report.py: this script's folder is on sys.path


@dataclass(frozen=True)
class Regime:
    what: str
    dataset: str
    teacher: str  # "cnn1d:W" or "mlp:W1.W2"
    student: str
    teacher_epochs: int
    epochs: int
    transfer: int = 0
    temperature: float = 2.0
    alpha: float = 0.1
    lr: float = 3e-3
    augment: str | None = None
    mixup: float = 0.0
    batch_size: int = 64
    labelled: int = 0  # > 0: the student gets this many labelled inputs, the rest of train as a transfer set
    omit: int | None = None  # a class the student's data lacks entirely (alpha should be 0: soft labels only)
    teacher_lr: float | None = None  # None: lr, with a cosine schedule; else this lr, constant (the README's)
    scheduler: str | None = "cosine"  # the students'


REGIMES = {
    # The README / quickstart example: 100 labelled digits and 1,337 unlabelled ones that the teacher labels.
    "flagship": Regime("digits, 100 labelled + 1,337 unlabelled (transfer set)", "digits", "mlp:256.256", "mlp:32",
                       8, 10, temperature=4.0, alpha=0.5, lr=3e-3, batch_size=32, labelled=100, teacher_lr=1e-3),
    # Hinton et al.'s omitted-class experiment: no 3 in the student's data; the soft labels only. A constant lr:
    # the 3s are learnt slowly, from the small probabilities of "3" on other digits, and a cosine schedule's
    # decay stops that early (class-3 accuracy 23 +- 18 % cosine vs 85 % constant, measured over seeds 0-4 / 0-2).
    "omitted-class": Regime("digits without any 3, soft labels only", "digits", "mlp:256.256", "mlp:32",
                            8, 20, temperature=8.0, alpha=0.0, lr=3e-3, omit=3, teacher_lr=1e-3, scheduler=None),
    # Hinton's transfer set on MNIST-1D, a CNN teacher, an MLP student (3.8x fewer parameters, no convolution:
    # it needs many inputs to learn what the CNN knows); its CT run adds the generator's transforms and mixup.
    "mnist1d-transfer": Regime("MNIST-1D, transfer set of 20,000 unlabelled signals", "mnist1d", "cnn1d:64",
                               "mlp:64.64", 40, 20, transfer=20_000, lr=5e-3, batch_size=128, augment="mnist1d",
                               mixup=0.4),
    # A student big enough for digits: the teacher has nothing to add.
    "no-help": Regime("digits, a student big enough for the data", "digits", "mlp:256.256", "mlp:128",
                      30, 30, temperature=4.0, alpha=0.5, lr=1e-3, augment="digits"),
}


def make(spec: str, dataset: str) -> torch.nn.Module:
    kind, _, sizes = spec.partition(":")
    if kind == "cnn1d":
        return kdnb.models.cnn1d(10, width=int(sizes))
    return kdnb.models.mlp(64 if dataset == "digits" else 40, [int(w) for w in sizes.split(".")], 10)


def student_data(regime: Regime, train: DataLoader, seed: int) -> tuple[DataLoader, Any]:
    """The student's (labelled loader, transfer set): the teacher's whole train set, or the regime's part of it."""
    flat = regime.dataset == "digits"
    if regime.transfer:
        return train, kdnb.datasets.transfer_set(regime.dataset, num_samples=regime.transfer, seed=seed + 1,
                                                 flat=flat, reference_seed=seed, batch_size=regime.batch_size)
    if not regime.labelled and regime.omit is None:
        return train, None
    x, y = train.dataset.tensors
    rows = y != regime.omit if regime.omit is not None else torch.arange(len(y)) < regime.labelled
    part = DataLoader(TensorDataset(x[rows], y[rows]), batch_size=regime.batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))
    return part, (x[~rows] if regime.labelled else None)


def class_accuracy(model: torch.nn.Module, val: DataLoader, label: int) -> float:
    x, y = val.dataset.tensors
    with torch.no_grad():
        return (model(x)[y == label].argmax(dim=1) == label).float().mean().item()


def run_seed(regime: Regime, seed: int, skip: set[str]) -> dict[str, float]:
    flat = regime.dataset == "digits"
    train, val = kdnb.datasets.load(regime.dataset, batch_size=regime.batch_size, seed=seed, flat=flat)
    data, transfer = student_data(regime, train, seed)
    quiet = dict(progress=False, plot=False, device="cpu", lr=regime.lr, seed=seed, scheduler=regime.scheduler)
    torch.manual_seed(seed)
    teacher = make(regime.teacher, regime.dataset)
    cosine = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, regime.teacher_epochs)  # noqa: E731
    kdnb.train(teacher, train, epochs=regime.teacher_epochs, progress=False, plot=False, device="cpu", seed=seed,
               lr=regime.teacher_lr or regime.lr, scheduler=None if regime.teacher_lr else cosine)
    teacher.eval()
    torch.manual_seed(seed + 1000)
    student = make(regime.student, regime.dataset)
    kd_args = dict(temperature=regime.temperature, alpha=regime.alpha, epochs=regime.epochs, transfer=transfer, **quiet)

    kd = kdnb.distill(teacher, student, data, val, baseline=("scratch", "pseudo"), **kd_args)
    acc = kd.accuracy
    row = {"teacher": acc["teacher"], "scratch": acc["scratch"], "pseudo": acc["pseudo"], "KD": acc["distilled"]}
    if regime.omit is not None:
        models = {"teacher": teacher, "scratch": kd.baselines["scratch"], "pseudo": kd.baselines["pseudo"],
                  "KD": kd.student}
        row.update({f"class-{regime.omit} {name}": class_accuracy(m, val, regime.omit) for name, m in models.items()})
    if "dkd" not in skip:
        dkd_args = {**kd_args, "alpha": 1.0, "beta": 8.0}
        dkd = kdnb.distill(teacher, student, data, val, method="dkd", **dkd_args)
        row["DKD"] = dkd.accuracy["distilled"]
        if regime.omit is not None:
            row[f"class-{regime.omit} DKD"] = class_accuracy(dkd.student, val, regime.omit)
    if "ct" not in skip and regime.augment:
        ct = kdnb.distill(teacher, student, data, val, baseline=("scratch", "pseudo"), augment=regime.augment,
                          mixup=regime.mixup, **kd_args).accuracy
        row.update({"CT scratch": ct["scratch"], "CT pseudo": ct["pseudo"], "CT KD": ct["distilled"]})
    for name in [n for n in row if n not in ("teacher", "scratch", "CT scratch") and not n.startswith("class-")]:
        scratch = row["CT scratch"] if name.startswith("CT") else row["scratch"]
        gap = row["teacher"] - scratch  # none to close when the scratch student matches the teacher
        row[f"gap closure {name}"] = (row[name] - scratch) / gap if gap > 0 else float("nan")
    row["KD - scratch"] = row["KD"] - row["scratch"]
    row["KD - pseudo"] = row["KD"] - row["pseudo"]
    if "CT KD" in row:
        row["CT KD - CT pseudo"] = row["CT KD"] - row["CT pseudo"]
    if regime.omit is not None:
        row[f"class-{regime.omit} KD - pseudo"] = row[f"class-{regime.omit} KD"] - row[f"class-{regime.omit} pseudo"]
    return row


def report(name: str, regime: Regime, rows: list[dict[str, float]]) -> None:
    print(f"[{name}] {regime.what}: teacher {regime.teacher}, student {regime.student}, {regime.epochs} epochs, "
          f"T={regime.temperature:g}, alpha={regime.alpha:g}, lr={regime.lr:g} {regime.scheduler or 'constant'}"
          + (f", augment={regime.augment!r}, mixup={regime.mixup:g}" if regime.augment else "")
          + f", {len(rows)} seeds")
    for key in rows[0]:
        values = [100 * row[key] for row in rows if row[key] == row[key]]  # NaN: no gap to close that seed
        if not values:
            continue
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"  {key:26s} {statistics.mean(values):6.1f} +- {std:4.1f}  (min {min(values):6.1f})  "
              + " ".join(f"{v:6.1f}" for v in values))
    for gain in [key for key in rows[0] if " - " in key]:
        values = [row[gain] for row in rows]
        mean, std = statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
        verdict = ("one seed: no spread to judge by" if len(values) < 2 else "> 1 std: a real gain"
                   if mean > std else "< -1 std: a real loss" if mean < -std else "within noise")
        print(f"  {gain}: {100 * mean:+.1f} +- {100 * std:.1f} pp -> {verdict}")
    wins = sum(row["KD"] > row["scratch"] for row in rows)
    print(f"  KD beats scratch in {wins} of {len(rows)} seeds", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--seed-list", type=int, nargs="*", help="run these seeds instead of range(--seeds)")
    parser.add_argument("--regime", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument("--skip", nargs="*", default=[], choices=["dkd", "ct"], help="runs to leave out")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and it doesn't stall on a busy machine
    start = time.perf_counter()
    for name in args.regime:
        rows = []
        for seed in args.seed_list or range(args.seeds):
            began = time.perf_counter()
            rows.append(run_seed(REGIMES[name], seed, set(args.skip)))
            print(f"  ({name}, seed {seed}: {time.perf_counter() - began:.0f} s)", flush=True)
        report(name, REGIMES[name], rows)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread; "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    report.run(main, modes=("--regime", "--skip"))
