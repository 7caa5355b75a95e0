"""Compress a transformer (tutorial 05): prune heads and MLP neurons of a trained `kdnb.models.vit_tiny`,
then recover by distilling from the unpruned model, beside the same shape trained from scratch.

For each seed: train the ViT on the 8x8 digits (``TEACHER_EPOCHS``); score heads, MLP neurons and embedding
channels by activation (Minitron), L1, Taylor and random, and delete the same fraction of each layer's units
(``scope="local"``: every criterion gives the same shape) with least-squares reconstruction; report accuracy
without recovery. Then, from the activation-pruned model, ``RECOVERY_EPOCHS`` epochs of

- logit KD from the unpruned model (``kdnb.distill``, method "kd"),
- logit + feature KD (method "fitnets": KD plus the mean squared error between every block's output, the
  residual stream, of teacher and student, through a learned Linear adapter from the student's narrower
  width; ``FEATURE_PAIRS``),
- fine-tuning on the labels (``kdnb.train``),

against the pruned shape re-initialised and trained from scratch for the same ``RECOVERY_EPOCHS`` epochs, and
for the teacher's and the recovery's epochs together (the whole budget the pruned model had). Goal
(issue 12): pruned + distilled within 1 pp of the unpruned model at >= 2x fewer MACs, ahead of scratch.

    .venv/bin/python bench/transformer.py [--seeds 3]   # 526 s on one thread of a 2-core box at load ~6
"""
from __future__ import annotations

import copy
import statistics
import sys
import time
import warnings

import torch
from torch import nn

import kdnb
import report  # bench/report.py: this script's folder is on sys.path

TEACHER_EPOCHS, RECOVERY_EPOCHS, LR = 20, 15, 3e-3
SPARSITY = 0.55  # of the prunable weights: with scope "local", the units this removes halve the MACs
CRITERIA = ("activation", "l1", "taylor", "random")
FEATURE_PAIRS = [("blocks.0", "blocks.0"), ("blocks.1", "blocks.1")]  # (teacher, student) block outputs
SEEDS = range(int(sys.argv[sys.argv.index("--seeds") + 1]) if "--seeds" in sys.argv else 3)
torch.set_num_threads(1)


def reinitialised(model: nn.Module, seed: int) -> nn.Module:
    """The same shape with fresh weights: every layer's own initialisation, the class token at zero and the
    position embedding drawn as `kdnb.models.vit_tiny` draws them."""
    fresh = copy.deepcopy(model)
    torch.manual_seed(seed)
    for module in fresh.modules():
        if hasattr(module, "reset_parameters") and module is not fresh:
            module.reset_parameters()
    with torch.no_grad():
        fresh.cls.token.zero_()
        fresh.pos.embedding.normal_(0, 0.02)
    return fresh


def accuracy(model: nn.Module, val) -> float:
    return kdnb.evaluate(model, val)["accuracy"]


def shape(model: nn.Module) -> str:
    blocks = ", ".join(f"{b.attn.num_heads}h/{b.mlp[0].out_features}n" for b in model.blocks)
    return f"dim {model.patches.out_channels}, blocks [{blocks}]"


def one_seed(seed: int, train, val, rows: dict[str, list[float]]) -> None:
    quiet = {"progress": False, "plot": False}
    torch.manual_seed(seed)
    teacher = kdnb.models.vit_tiny(10)
    kdnb.train(teacher, train, val=val, epochs=TEACHER_EPOCHS, lr=LR, seed=seed, device="cpu", **quiet)
    teacher.eval()
    rows["unpruned"].append(accuracy(teacher, val))
    pruned = {}
    for criterion in CRITERIA:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = kdnb.prune(teacher, SPARSITY, criterion=criterion, structured=True, scope="local", data=train,
                                seed=seed, device="cpu", **quiet)
        pruned[criterion] = result.model
        rows[f"pruned, {criterion}"].append(accuracy(result.model, val))
    small = pruned["activation"]
    example = next(iter(val))[0][:1]
    macs = kdnb.measure(teacher, example, repeats=1, warmup=0).macs, kdnb.measure(small, example, repeats=1,
                                                                                    warmup=0).macs
    rows["MACs ratio"].append(macs[0] / macs[1])
    start = time.perf_counter()
    distilled = kdnb.distill(teacher, small, train, val=val, method="kd", epochs=RECOVERY_EPOCHS, lr=LR, seed=seed,
                             device="cpu", **quiet).student
    rows["seconds, distil"].append(time.perf_counter() - start)
    rows["pruned + distilled"].append(accuracy(distilled, val))
    start = time.perf_counter()
    featured = kdnb.distill(teacher, small, train, val=val, method="fitnets", features=FEATURE_PAIRS,
                            epochs=RECOVERY_EPOCHS, lr=LR, seed=seed, device="cpu", **quiet)
    rows["seconds, logit+feature"].append(time.perf_counter() - start)
    rows["pruned + logit+feature KD"].append(accuracy(featured.student, val))
    rows["hint loss, last epoch"].append(statistics.mean(featured.history.steps["hint"][-len(train):]))
    finetuned = copy.deepcopy(small)
    kdnb.train(finetuned, train, val=val, epochs=RECOVERY_EPOCHS, lr=LR, seed=seed, device="cpu", **quiet)
    rows["pruned + fine-tuned"].append(accuracy(finetuned, val))
    for epochs in (RECOVERY_EPOCHS, TEACHER_EPOCHS + RECOVERY_EPOCHS):
        scratch = reinitialised(small, seed)
        kdnb.train(scratch, train, val=val, epochs=epochs, lr=LR, seed=seed, device="cpu", **quiet)
        rows[f"scratch, {epochs} epochs"].append(accuracy(scratch, val))
    print(f"seed {seed}: {shape(small)}, MACs {macs[0]:,} -> {macs[1]:,}; unpruned {rows['unpruned'][-1]:.4f}, "
          f"distilled {rows['pruned + distilled'][-1]:.4f}, scratch {rows[f'scratch, {RECOVERY_EPOCHS} epochs'][-1]:.4f}",
          flush=True)


def main() -> None:
    start = time.perf_counter()
    train, val = kdnb.datasets.load("digits", batch_size=64, seed=0)
    print(f"vit_tiny on digits: teacher {TEACHER_EPOCHS} epochs; structured, scope local, sparsity {SPARSITY} with "
          f"reconstruction; recovery {RECOVERY_EPOCHS} epochs, lr {LR}; seeds {list(SEEDS)}, 1 thread")
    rows: dict[str, list[float]] = {}
    for key in ("unpruned", *(f"pruned, {c}" for c in CRITERIA), "pruned + distilled", "pruned + logit+feature KD",
                "pruned + fine-tuned",
                f"scratch, {RECOVERY_EPOCHS} epochs", f"scratch, {TEACHER_EPOCHS + RECOVERY_EPOCHS} epochs",
                "MACs ratio", "seconds, distil", "seconds, logit+feature", "hint loss, last epoch"):
        rows[key] = []
    for seed in SEEDS:
        one_seed(seed, train, val, rows)
    print(f"\n{'':30s} {'mean':>7s} {'± std':>7s}")
    for key, values in rows.items():
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        print(f"{key:30s} {statistics.mean(values):7.4f} {spread:7.4f}")
    mean = {key: statistics.mean(values) for key, values in rows.items()}
    gap = (mean["unpruned"] - mean["pruned + distilled"]) * 100
    ahead = (mean["pruned + distilled"] - mean[f"scratch, {RECOVERY_EPOCHS} epochs"]) * 100
    whole = (mean["pruned + distilled"] - mean[f"scratch, {TEACHER_EPOCHS + RECOVERY_EPOCHS} epochs"]) * 100
    print(f"\ngoal 1: distilled within 1 pp of unpruned: {gap:+.2f} pp below -> {'ok' if gap <= 1 else 'MISSED'}")
    print(f"goal 2: >= 2x fewer MACs: {mean['MACs ratio']:.2f}x -> {'ok' if min(rows['MACs ratio']) >= 2 else 'MISSED'}")
    print(f"goal 3: ahead of scratch, same {RECOVERY_EPOCHS} epochs: {ahead:+.2f} pp -> {'ok' if ahead > 0 else 'MISSED'}; "
          f"ahead of scratch for all {TEACHER_EPOCHS + RECOVERY_EPOCHS} epochs: {whole:+.2f} pp")
    feature = (mean["pruned + logit+feature KD"] - mean["pruned + distilled"]) * 100
    paired = [f - d for f, d in zip(rows["pruned + logit+feature KD"], rows["pruned + distilled"])]
    spread = statistics.stdev(paired) * 100 if len(paired) > 1 else float("nan")
    print(f"logit + feature KD - logit KD: {feature:+.2f} ± {spread:.2f} pp (paired by seed) -> "
          f"{'feature KD helps' if feature > spread else 'within noise' if feature > -spread else 'feature KD hurts'}")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    report.run(main)
