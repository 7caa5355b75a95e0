"""One-shot pruning without fine-tuning: how much accuracy each criterion keeps, with and without
reconstruction, beside torch's ``global_unstructured`` L1, Torch-Pruning's own importances (MetaPruner) and
random. Two networks: the notebook-02 teacher (mlp 64-[256,256]-10, 8 epochs on digits) and a conv net
(``cnn_bn`` width 16 on digits images, 8 epochs). Three seeds (each seed trains its own network and
seeds the loaders); cells are ``mean ± std (seconds per run)``.

Unstructured rows: fraction of Linear/Conv weights removed. Structured rows: fraction of the hidden
neurons / channels removed in every layer (the classifier's outputs kept): kdnb with ``scope="local"`` at
the weight sparsity that fraction implies; Torch-Pruning with ``MetaPruner(pruning_ratio=fraction)``.
kdnb's columns reconstruct (the default with data) unless marked "no rec", and cut channels in the default
``rounds`` (re-scored, re-solved steps, `DEFAULT_ROUNDS`) unless marked "1 round"; "default" is
``criterion="auto"``. "scratch" trains the pruned shape from scratch with the teacher's recipe (8 epochs, the
same loaders): the fair small network to compare with. One CPU thread.

    .venv/bin/python bench/prune_oneshot.py [--net mlp|cnn_bn] [--part unstructured|structured|pattern] [--seeds N]
        [--quick] [--only "default,random,l1"]

kdnb's unstructured columns rank globally (its default scope) but "l1 local" (each layer at the row's sparsity).
Global L1 is torch's ranking: re-solved, it still ends below random where it starves a layer (from 95 % on the MLP,
whose middle layer it leaves 0.4 % of its weights; kdnb warns from a tenth of the density kept overall). 2026-12-03,
an AMD EPYC (AVX-512), 3 seeds, re-solved, 80/90/95/98 %: MLP (114 s, dense 0.9833) l1 0.9786/0.9814/0.7428/0.0891,
l1 local 0.9786/0.9786/0.9350/0.5710, random 0.9712/0.9350/0.8041/0.4568, LAMP (the default) 0.9786/0.9759/
0.9805/0.9619, wanda 0.9786/0.9759/0.9786/0.9526, obs 0.9824/0.9740/0.9684/0.9647, taylor 0.9814/0.9796/0.9638/
0.7307, hessian 0.9805/0.9796/0.9656/0.7419, torch global L1 0.9629/0.8171/0.1281/0.0994; reconstructing the
teacher 1.12 s. cnn_bn (54 s, dense 0.9731): l1 0.9573/0.8849/0.6908/0.0929, l1 local 0.8663/0.5348/0.2990/0.1393,
random 0.6667/0.3974/0.2498/0.1096, LAMP 0.9610/0.8895/0.7214/0.2526, wanda 0.9582/0.8923/0.7103/0.2674, obs
0.9619/0.8802/0.6509/0.4791, torch global L1 0.1903/0.1179/0.0947/0.0938. So every criterion re-solved beats random
on every row but global L1 where it starves a layer (MLP 95/98 %, cnn_bn 98 %, all near chance there); L1 local
beats random on every row of both nets, and loses to global L1 on the conv net at 80-95 %. cnn_bn structured (the
same box, 179 s), 50/75/90 % of the channels: default 0.9239/0.7187/0.4615, obs 0.9266/0.6778/0.3779, wanda
0.9127/0.6778/0.4578, l1 0.9174/0.6630/0.4095, random + refit 0.8793/0.6193/0.3110, scratch 0.8951/0.5775/0.2693,
the best TP importance 0.1755/0.0956/0.1021 (magnitude, magnitude, taylor/random).
MLP structured (the same box, 282 s, dense 0.9833): default 0.9759/0.9749/0.9601, thinet 0.9759/0.9749/0.9601, obs
0.9768/0.9749/0.9656, hessian 0.9805/0.9749/0.9526, wanda 0.9786/0.9749/0.9573, l1 0.9805/0.9740/0.9545, taylor
0.9814/0.9721/0.9545, taylor_group 0.9768/0.9703/0.9619, random + refit 0.9768/0.9694/0.9304 (cut once since
2026-12-03: its 8 rounds cut the same channels; 0.9768/0.9684/0.9304 in rounds, session 11), scratch 0.9740/0.9712/
0.9053, TP magnitude 0.8904/0.6258/0.4605; the default prune of the teacher 3.70 s CPU, its refits 1.64 s. So at 50 %
the default (ThiNet) is 1 of 1,077 digits below random and obs and group Taylor tie it; at 75 / 90 % every criterion
is above it, by 0.1-0.6 pp at 75 % and 2.2-3.5 pp at 90 %.

The pattern table: 2:4 (2 of every 4 consecutive inputs of a Linear row, of a conv's input channels at each
kernel position; cnn_bn's 1-channel stem stays dense, so its sparsity is 49.8 %), re-solved unless "no rec" (ASP's
magnitude 2:4), beside 50 % chosen freely ("free": torch's global L1, kdnb's default). ``--part pattern --seeds 9``
(2026-12-01, 70 s), MLP / cnn_bn: l1 no rec 0.9706 / 0.6363, random 0.9690 / 0.9328, l1 0.9737 / 0.9663, wanda
0.9737 / 0.9647, obs 0.9740 / 0.9684 (the default for a pattern with data since; before it, "auto" chose
l1's 2:4 there), free: torch 0.9743 / 0.9164, kdnb's default 0.9740 / 0.9715. On 3 seeds (dense 0.9833 / 0.9731):
l1 0.9814 / 0.9647, obs 0.9777 / 0.9731, free default 0.9814 / 0.9740.

With the MLP's structured table it first prints the CPU seconds of the default structured prune of the
teacher (90 % of the hidden neurons) and of its refits alone (`reconstruct`, every round).

``--net`` runs one network, ``--part`` one table (both by default); ``--quick`` runs one seed, ``--seeds N``
N seeds, ``--only`` the columns whose label starts with one of the given words. The structured tables took
about 19 minutes each on the shared 2-core box (kdnb's 8-round columns cost 1.5-5 s of CPU a run for the MLP).
To fit, the conv net calibrates its reconstruction on 512 samples (x 64 positions = 32768 rows per layer; the
default 2048 gained 0.3-2 pp at about 3x the time) and skips kdnb's hessian, taylor and taylor_group columns
(per-sample and per-batch gradients of convs are slow), not TP's.

One validation digit is 0.0028 of a seed's accuracy, so 3-seed means of methods within a few digits of each
other do not rank them. ``--net mlp --part structured --seeds 9 --only
"default,random,l1,hessian,taylor,wanda,obs,thinet,scratch"`` (2026-12-01, 929 s, dense 0.9749 over the 9 seeds),
50/75/90 % of the hidden neurons: default 0.9743/0.9734/0.9551, obs 0.9752/0.9709/0.9492, hessian
0.9734/0.9681/0.9421, l1 0.9734/0.9678/0.9446, wanda 0.9740/0.9678/0.9455, taylor 0.9737/0.9669/0.9403,
taylor_group 0.9737/0.9663/0.9384, random + refit 0.9725/0.9653/0.9208, scratch 0.9684/0.9650/0.9143: every
informed criterion above random on every row, and the default 0.06/0.15/1.98 pp below the dense nets.
Tried on the default and not kept (2026-12-01, this script's functions, MLP): 16 or 32 rounds instead of 8 (75 %,
3 seeds: 0.9721, 0.9740 vs 0.9749); ThiNet's consumer rows weighted by their downstream output sensitivity (the
diagonal of E[J^T J], Hutchinson probes; 6 seeds, 75/90 %: 0.9731/0.9485 vs 0.9745/0.9522); the refit's damping
0.001 or 0.1 instead of 0.01 (9 seeds, 75/90 %: 0.9709/0.9508 and 0.9681/0.9496 vs 0.9734/0.9551).
Also tried (2026-12-01, 9 seeds, 75/90 %, against the default's 0.9734/0.9551): a ReLU-aware refit of the hidden
layers (one-sided targets: where the dense pre-activation is <= 0 any output <= 0 is exact; 5 or 20 alternating
solves) 0.9715/0.9548 and 0.9697/0.9536; scoring each layer's channels with the rows its consumer loses in the same
cut already zeroed 0.9706/0.9551; picking, per prune, the candidate (default, obs, hessian, wanda, 1-round thinet)
whose pruned net is closest to the dense one on the calibration samples (KL of the logits) 0.9721/0.9579. The best
of those five per seed, picked on the validation digits themselves (an oracle, not a method), averages 0.9759 at
75 % over the 9 seeds (dense 0.9749) and 0.9786 on the bench's seeds 0-2: the default is within a digit or two of
what any of these selections reaches.

Since 2026-12-02 every kdnb column that reconstructs also fits the output layer, after its last cut, to the dense
model's predicted distribution (`kdnb.engine.prune.rebuild.output_refit`: KL, pulled towards the least-squares solution).
``--net mlp`` that day (3 seeds, 426 s, an AVX-512 Xeon, dense 0.9833): unstructured default (LAMP) 80/90/95/98 %
0.9786/0.9759/0.9814/0.9610 (least squares only, the same box: 0.9777/0.9721/0.9396 at 90/95/98 %); structured
default 50/75/90 % 0.9777/0.9759/0.9656 (least squares only: 0.9777/0.9749/0.9601), random + refit
0.9768/0.9694/0.9304; 2:4 default (SparseGPT's sweep) 0.9796 (before: 0.9777), free 50 % 0.9824. Reconstruction of
the teacher 1.06 s (least squares alone 0.1 s), the default structured prune at 90 % 3.32 s CPU, of which the
refits 1.32 s.
``--net mlp --part structured --seeds 9`` (860 s, dense 0.9749): default 0.9749/0.9746/0.9601, random + refit
0.9740/0.9678/0.9344 (at 50/75 % some criteria now 1-4 of 3,231 digits below it: taylor, hessian and the 1-round
l1/thinet at 50 %, l1 at 75 %; at 90 % every one 1.2-2.6 pp above). ``--net cnn_bn``: structured (253 s) default
0.9211/0.6973/0.4076 (least squares only, 2026-12-01: 0.918/0.626/0.359), best TP importance 0.1959/0.0966/0.1021,
random + refit 0.8830/0.6221/0.3213; unstructured (86 s) LAMP 0.9656/0.8784/0.6964/0.2331 at 80-98 %.
"""
from __future__ import annotations

import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as torch_prune

import kdnb
from kdnb.engine.evaluate import evaluate
from kdnb.engine.loop import fit
from kdnb.engine.prune import prune, reconstruct
from kdnb.engine.prune.cut.masks import clone
import report  # bench/report.py: this script's folder is on sys.path

torch.set_num_threads(1)
QUICK = "--quick" in sys.argv


def _option(name: str, default: object) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default  # type: ignore[return-value]


SEEDS = (0,) if QUICK else tuple(range(int(_option("--seeds", 3))))
NETS = (_option("--net", None),) if "--net" in sys.argv else ("mlp", "cnn_bn")
PARTS = (_option("--part", None),) if "--part" in sys.argv else ("unstructured", "structured", "pattern")
ONLY = tuple(_option("--only", "").split(",")) if "--only" in sys.argv else ("",)  # label prefixes
UNSTRUCTURED = (0.8, 0.9, 0.95, 0.98)
STRUCTURED = (0.5, 0.75, 0.9)
KDNB_UNSTRUCTURED = {"mlp": ("lamp", "l1", "wanda", "obs", "taylor", "hessian", "random"),
                     "cnn_bn": ("lamp", "l1", "wanda", "obs", "random")}
KDNB_STRUCTURED = {"mlp": ("l1", "taylor", "taylor_group", "hessian", "obs", "wanda", "thinet", "random"),
                   "cnn_bn": ("l1", "obs", "wanda", "thinet", "random")}
CALIBRATION = {"mlp": 2048, "cnn_bn": 512}


BUILD = {"mlp": lambda width: kdnb.models.mlp(64, [width, width], 10),  # the teacher: width 256
         "cnn_bn": lambda width: kdnb.models.cnn_bn(width=width)}  # the teacher: width 16 (16, 16, 32, 32)
WIDTH = {"mlp": 256, "cnn_bn": 16}


def trained(name: str, width: int, seed: int) -> tuple[nn.Module, object, object]:
    """The teacher's recipe: digits (flat for the MLP), seeded loaders and init, 8 epochs of the one loop."""
    train, val = kdnb.datasets.load("digits", batch_size=64, seed=seed, flat=name == "mlp")
    torch.manual_seed(seed)
    net = BUILD[name](width)
    fit(net, train, epochs=8, seed=seed, device="cpu", check_inputs=False)
    return net.eval(), train, val


def networks(seed: int) -> dict[str, tuple[nn.Module, object, object]]:
    return {name: trained(name, WIDTH[name], seed) for name in NETS}


def timed(fn) -> tuple[float, float]:
    start = time.perf_counter()
    model, val = fn()
    elapsed = time.perf_counter() - start
    return evaluate(model, val)["accuracy"], elapsed


def torch_global_l1(net, sparsity, train, val):
    net = clone(net)
    layers = [(m, "weight") for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    torch_prune.global_unstructured(layers, torch_prune.L1Unstructured, amount=sparsity)
    return net, val


def kdnb_unstructured(criterion, rec, samples, scope="global"):
    def run(net, sparsity, train, val):
        return prune(net, sparsity, criterion=criterion, data=train, reconstruct=rec, calibration_samples=samples,
                     scope=scope, device="cpu").model, val
    return run


def kdnb_pattern(criterion, rec, samples):
    def run(net, sparsity, train, val):
        return prune(net, sparsity, criterion=criterion, pattern="2:4", data=train, reconstruct=rec,
                     calibration_samples=samples, device="cpu").model, val
    return run


def channel_sparsity(net: nn.Module, fraction: float) -> float:
    """Weight sparsity of removing ``fraction`` of every hidden layer's outputs in a chain of layers."""
    layers = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    before = after = 0
    kept_in = None
    for i, layer in enumerate(layers):
        out = layer.weight.shape[0]
        kept_out = out if i == len(layers) - 1 else out - int(fraction * out + 1e-9)
        per = layer.weight[0, 0].numel()
        inputs = layer.weight.shape[1]
        before += out * inputs * per
        after += kept_out * (inputs if kept_in is None else kept_in) * per
        kept_in = kept_out
    return 1 - after / before


def kdnb_structured(criterion, rec, samples, rounds=None):
    def run(net, fraction, train, val):
        result = prune(net, channel_sparsity(net, fraction) - 1e-9, criterion=criterion, structured=True,
                       scope="local", data=train, reconstruct=rec, calibration_samples=samples, device="cpu",
                       rounds=rounds)
        return result.model, val
    return run


def scratch(name: str, seed_of: dict[int, int]):
    """The pruned shape (every hidden width cut by the row's fraction) trained from scratch, teacher's recipe."""
    def run(net, fraction, train, val):
        width = WIDTH[name] - int(fraction * WIDTH[name] + 1e-9)  # cnn_bn: 2w channels lose 2x as many
        small, _, val = trained(name, width, seed_of[id(net)])
        return small, val
    return run


def torch_pruning(importance):
    def run(net, fraction, train, val):
        net = clone(net)
        x, y = next(iter(train))
        imp = importance()
        last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
        pruner = tp.pruner.MetaPruner(net, x[:1], importance=imp, pruning_ratio=fraction, ignored_layers=[last])
        if isinstance(imp, tp.importance.GroupHessianImportance):
            imp.zero_grad()
            for i in range(256):  # per-sample gradients, as TP's Hessian example does
                net.zero_grad()
                F.cross_entropy(net(x[i % len(x)][None]), y[i % len(y)][None]).backward()
                imp.accumulate_grad(net)
        elif isinstance(imp, tp.importance.GroupTaylorImportance):
            net.zero_grad()
            for xb, yb in train:
                F.cross_entropy(net(xb), yb).backward()
        pruner.step()
        return net, val
    return run


TP_IMPORTANCES = {"TP magnitude": tp.importance.MagnitudeImportance, "TP taylor": tp.importance.TaylorImportance,
                  "TP hessian": tp.importance.HessianImportance, "TP random": tp.importance.RandomImportance}


def table(title: str, rows, methods: dict, seeds_nets, net_name: str) -> None:
    print(f"\n## {title}")
    methods = {name: fn for name, fn in methods.items() if name.startswith(ONLY)}
    cells: dict[tuple[float, str], list[tuple[float, float]]] = {}
    for nets in seeds_nets:
        net, train, val = nets[net_name]
        for row in rows:
            for name, fn in methods.items():
                cells.setdefault((row, name), []).append(timed(lambda: fn(net, row, train, val)))
    print("| " + " | ".join(["removed", *methods]) + " |")
    print("|" + "---|" * (len(methods) + 1))
    for row in rows:
        out = []
        for name in methods:
            accs = [a for a, _ in cells[(row, name)]]
            secs = statistics.mean(t for _, t in cells[(row, name)])
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            out.append(f"{statistics.mean(accs):.4f}±{std:.3f} ({secs:.2f}s)")  # 4 digits: one val digit is 0.0028
        print(f"| {row:.0%} | " + " | ".join(out) + " |")


def reconstruction_time(nets) -> float:
    net, train, _ = nets["mlp"]
    masked = prune(net, 0.9, criterion="lamp", reconstruct=False).model
    start = time.perf_counter()
    reconstruct(masked, net, train)
    return time.perf_counter() - start


def structured_default_time(nets) -> tuple[float, float]:
    """CPU seconds (one thread) of the default structured prune of the tutorial teacher at 90 % of the hidden
    neurons, and of its refits alone (every round's `reconstruct`)."""
    from kdnb.engine.prune import pipeline

    net, train, val = nets["mlp"]
    spent = [0.0]

    def timed_refit(*args, **kwargs):
        start = time.thread_time()
        try:
            return refit(*args, **kwargs)
        finally:
            spent[0] += time.thread_time() - start

    refit, pipeline.reconstruct_layers = pipeline.reconstruct_layers, timed_refit
    try:
        start = time.thread_time()
        kdnb_structured("auto", None, CALIBRATION["mlp"])(net, 0.9, train, val)
        return time.thread_time() - start, spent[0]
    finally:
        pipeline.reconstruct_layers = refit


def main() -> None:
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    seeds_nets = [networks(seed) for seed in SEEDS]
    for name in NETS:
        dense = [evaluate(n[name][0], n[name][2])["accuracy"] for n in seeds_nets]
        print(f"{name}: dense accuracy {statistics.mean(dense):.4f} over seeds {SEEDS}")
    if "mlp" in NETS and "unstructured" in PARTS:
        print(f"reconstruction of the tutorial teacher (mlp, 90 %, 1 thread): {reconstruction_time(seeds_nets[0]):.2f} s")
    if "mlp" in NETS and "structured" in PARTS:
        total, refits = structured_default_time(seeds_nets[0])
        print(f"default structured prune of the tutorial teacher (90 % of hidden neurons, 1 thread): {total:.2f} s "
              f"CPU, of which the refits {refits:.2f} s")
    for name in NETS:
        n = CALIBRATION[name]
        unstructured = {"torch global L1": torch_global_l1, "l1 no rec": kdnb_unstructured("l1", False, n),
                        **{c: kdnb_unstructured(c, True, n) for c in KDNB_UNSTRUCTURED[name]},
                        "l1 local": kdnb_unstructured("l1", True, n, scope="local")}
        seed_of = {id(nets[name][0]): seed for seed, nets in zip(SEEDS, seeds_nets)}
        structured = {**{k: torch_pruning(v) for k, v in TP_IMPORTANCES.items()}, "scratch": scratch(name, seed_of),
                      "l1 no rec": kdnb_structured("l1", False, n), "random no rec": kdnb_structured("random", False, n),
                      "l1 1 round": kdnb_structured("l1", True, n, rounds=1),
                      "thinet 1 round": kdnb_structured("thinet", True, n, rounds=1),
                      **{c: kdnb_structured(c, True, n) for c in KDNB_STRUCTURED[name]},
                      "default": kdnb_structured("auto", None, n)}
        patterned = {"torch global L1 free": torch_global_l1, "default free": kdnb_unstructured("auto", None, n),
                     "l1 no rec": kdnb_pattern("l1", False, n),
                     **{c: kdnb_pattern(c, True, n) for c in ("random", "l1", "wanda", "obs")},
                     "default": kdnb_pattern("auto", None, n)}
        if "unstructured" in PARTS:
            table(f"{name}: unstructured, no fine-tuning", UNSTRUCTURED, unstructured, seeds_nets, name)
        if "pattern" in PARTS:
            table(f"{name}: 2:4 (\"free\": 50 % unconstrained), no fine-tuning", (0.5,), patterned, seeds_nets, name)
        if "structured" in PARTS:
            table(f"{name}: structured (fraction of hidden neurons/channels), no fine-tuning", STRUCTURED,
                  structured, seeds_nets, name)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    report.run(main, modes=("--net", "--part", "--quick"))
