"""What kdnb's default prune with data costs as the model grows, and what it keeps of the accuracy.

Part "scale": time and peak RSS of one prune, each in a process of its own (2 threads), for the tutorial MLP
(digits), ``kdnb.models.resnet18`` / ``resnet50`` (torchvision's layers at their sizes) on 128 calibration images
at 224x224, and a BERT-base-sized encoder from a transformers config (110 M parameters, 128 sequences of 128
tokens; unstructured only): kdnb's default with data at 50 % structured and 80 % unstructured, beside
Torch-Pruning's ``MetaPruner`` (L1 magnitude, the channel ratio that removes 50 % of the weights) and torch's
``global_unstructured`` (L1, 80 %). It prints how the time grows with the FLOPs of a calibration pass.
``--baseline DIR`` also times the default of another checkout (e.g. /work/main, before this change) in the same
run, stopped after ``--limit`` seconds.

Part "accuracy": a network of resnet18's size (``kdnb.models.resnet18``, 1 input channel) trained briefly on the
digits rendered at 32x32, 3 seeds, one shot, no fine-tuning: the default with data, the default without data and
Torch-Pruning's best importance (of L1, L2, Taylor, BatchNorm scale) at 50 % structured; the default with data,
without data and torch's global L1 at 80 % unstructured.

Part "solve": the exact per-row re-solve against the refined SparseGPT sweep on random layers (time, error).

Part "threads": one calibration pass of resnet18 at 1, 2 and 4 intra-op threads, with the box as it is: how
torch's threads behave when other jobs share the cores.

    .venv/bin/python bench/prune_scale.py [--part scale|accuracy|solve|threads] [--models mlp,resnet18,resnet50,bert]
        [--methods structured,unstructured,tp,torch] [--baseline /work/main] [--limit 600] [--seeds 3]

The box's load (``uptime``) is printed before and after every timing: on a shared machine the numbers are only
comparable within one run.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import report  # bench/report.py: this script's folder is on sys.path

THREADS = 2
IMAGES, SIZE = 128, 224
TOKENS = 128


def _option(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def uptime() -> str:
    with open("/proc/loadavg") as f:
        return "load " + " ".join(f.read().split()[:3])


def gemm_speed() -> str:
    """What the box gives this process now: fp32 GFLOP/s of a 2048^2 matrix product at `THREADS` threads (2 quiet
    AVX-512 cores give ~100; a shared box far less), to read the times against."""
    torch.set_num_threads(THREADS)
    a = torch.randn(2048, 2048)
    start = time.perf_counter()
    for _ in range(3):
        a @ a
    return f"{3 * 2 * 2048 ** 3 / (time.perf_counter() - start) / 1e9:.0f} GFLOP/s"


def _model(name: str):
    """(model, calibration loader, example) of one benchmark model; random weights (cost does not depend on them)."""
    import kdnb

    torch.manual_seed(0)
    if name == "mlp":
        train, _ = kdnb.datasets.load("digits", batch_size=64, seed=0)
        return kdnb.models.mlp(64, [256, 256], 10), train
    if name in ("resnet18", "resnet50"):
        model = getattr(_replicas(), name)(num_classes=1000)
        x = torch.randn(IMAGES, 3, SIZE, SIZE)
        return model, DataLoader(TensorDataset(x, torch.randint(0, 1000, (IMAGES,))), batch_size=32)
    if name == "bert":
        from transformers import BertConfig, BertForSequenceClassification

        class Logits(nn.Module):  # the classifier's logits as a tensor, as torch's and TP's tools need
            def __init__(self):
                super().__init__()
                self.bert = BertForSequenceClassification(BertConfig(num_labels=2))

            def forward(self, input_ids):
                return self.bert(input_ids=input_ids).logits

        ids = torch.randint(0, 30522, (IMAGES, TOKENS))
        return Logits().eval(), DataLoader(TensorDataset(ids, torch.randint(0, 2, (IMAGES,))), batch_size=16)
    raise SystemExit(f"unknown model {name!r}")


def _replicas():
    """This checkout's ``kdnb.models`` (a ``--baseline`` checkout may predate its resnet18 / resnet50)."""
    import importlib.util

    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kdnb", "models.py")
    spec = importlib.util.spec_from_file_location("kdnb_bench_models", here)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def _tp(model: nn.Module, x: torch.Tensor, ratio: float, importance=None) -> nn.Module:
    import torch_pruning as tp

    from kdnb.engine.prune.cut.masks import clone

    model = clone(model).eval()
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(model, x, importance=importance or tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=[last])
    pruner.step()
    return model


def _tp_half(model: nn.Module, x: torch.Tensor, importance=None) -> nn.Module:
    """MetaPruner at the smallest channel ratio (bisected) that removes >= 50 % of the prunable weights."""
    total, low, high, best = _weights(model), 0.0, 0.9, None
    for _ in range(6):
        middle = (low + high) / 2
        pruned = _tp(model, x, middle, importance)
        if 1 - _weights(pruned) / total >= 0.5:
            high, best = middle, pruned
        else:
            low = middle
    return best if best is not None else _tp(model, x, high, importance)


def _torch_global(model: nn.Module, sparsity: float) -> nn.Module:
    from torch.nn.utils import prune as torch_prune

    from kdnb.engine.prune.cut.masks import clone

    model = clone(model)
    layers = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    torch_prune.global_unstructured(layers, torch_prune.L1Unstructured, amount=sparsity)
    return model


def one(name: str, method: str) -> None:
    """One timed prune in this process; prints a JSON line."""
    torch.set_num_threads(THREADS)
    warnings.simplefilter("ignore")
    model, loader = _model(name)
    x = next(iter(loader))[0]
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(x[:1])
    before = uptime()
    start = time.perf_counter()
    if method in ("structured", "unstructured"):
        import kdnb

        kdnb.prune(model, 0.5 if method == "structured" else 0.8, structured=method == "structured", data=loader)
    elif method == "tp":
        _tp_half(model, x[:1])
    elif method == "torch":
        _torch_global(model, 0.8)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                      "params": sum(p.numel() for p in model.parameters()),
                      "pass_flops": counter.get_total_flops() * len(loader.dataset),
                      "load": f"{before} -> {uptime()}"}))


def _run(name: str, method: str, root: str, limit: int) -> dict:
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS=str(THREADS))
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", name, method], env=env,
                              capture_output=True, text=True, timeout=limit, cwd=root)
    except subprocess.TimeoutExpired:
        return {"seconds": None, "note": f"> {limit} s (stopped)", "load": uptime()}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1][:100]
        return {"seconds": None, "note": f"failed: {tail}", "load": uptime(),
                "wall": time.perf_counter() - started}
    return json.loads(lines[-1])


def part_scale(models: list[str], baseline: str | None, limit: int) -> None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    methods = {"structured": "kdnb default, 50 % structured", "unstructured": "kdnb default, 80 % unstructured",
               "tp": "Torch-Pruning MetaPruner L1, 50 %", "torch": "torch global_unstructured L1, 80 %"}
    print(f"## scale: default prune with data, {THREADS} threads, {IMAGES} calibration images at {SIZE}x{SIZE} "
          f"({TOKENS} tokens for BERT); {uptime()}, fp32 product {gemm_speed()}")
    print("| model | params | calibration pass GFLOPs | method | time (s) | peak RSS (GB) | load (before -> after) |")
    print("|---|---|---|---|---|---|---|")
    rows: dict[tuple[str, str], dict] = {}
    chosen = _option("--methods", ",".join(methods)).split(",")
    for name in models:
        for method, label in methods.items():
            if name == "bert" and method in ("structured", "tp") or method not in chosen:
                continue
            runs = [(label, here)] + ([(f"{label} [baseline {baseline}]", baseline)]
                                      if baseline and method in ("structured", "unstructured") else [])
            for shown, root in runs:
                result = _run(name, method, root, limit)
                rows[(name, shown)] = result
                time_cell = f"{result['seconds']:.1f}" if result.get("seconds") is not None else result["note"]
                print(f"| {name} | {result.get('params', 0) / 1e6:.2f} M | {result.get('pass_flops', 0) / 1e9:.0f} | "
                      f"{shown} | {time_cell} | {result.get('rss_gb', float('nan')):.2f} | {result['load']} |",
                      flush=True)
    print("\nhow the default's time grows with the FLOPs of a calibration pass (seconds per TFLOP):")
    for method in ("structured", "unstructured"):
        cells = [f"{name} {r['seconds'] / (r['pass_flops'] / 1e12):.1f}" for (name, label), r in rows.items()
                 if label == methods[method] and r.get("seconds") and r.get("pass_flops")]
        print(f"  {methods[method]}: {', '.join(cells)}")


def _digits32(seed: int):
    """Digits at 32x32 (bilinear), one channel: a CIFAR-shaped task a resnet18-sized network trains on in seconds."""
    import kdnb

    train, val = kdnb.datasets.load("digits", batch_size=64, seed=seed)

    def up(loader, shuffle):
        x = torch.cat([b[0] for b in loader]).view(-1, 1, 8, 8)
        y = torch.cat([b[1] for b in loader])
        x = F.interpolate(x, size=32, mode="bilinear", align_corners=False)
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(TensorDataset(x, y), batch_size=64, shuffle=shuffle, generator=generator)

    return up(train, True), up(val, False)


def part_accuracy(seeds: int) -> None:
    import torch_pruning as tp

    import kdnb
    from kdnb.engine.evaluate import evaluate

    torch.set_num_threads(THREADS)
    warnings.simplefilter("ignore")
    importances = {"L1": lambda: tp.importance.MagnitudeImportance(p=1),
                   "L2": lambda: tp.importance.MagnitudeImportance(p=2),
                   "BN scale": lambda: tp.importance.BNScaleImportance()}
    table: dict[str, list[float]] = {}
    print(f"## accuracy: kdnb.models.resnet18 (1 channel, 10 classes) on digits at 32x32, {seeds} seeds, one shot, "
          f"no fine-tuning; {uptime()}")
    for seed in range(seeds):
        torch.manual_seed(seed)
        train, val = _digits32(seed)
        net = kdnb.models.resnet18(10, in_channels=1)
        kdnb.train(net, train, epochs=3, lr=1e-3, seed=seed, device="cpu")
        x = next(iter(train))[0]
        runs = {"dense": lambda: net,
                "50 % structured, default with data": lambda: kdnb.prune(net, 0.5, structured=True, data=train).model,
                "50 % structured, default without data": lambda: kdnb.prune(net, 0.5, structured=True,
                                                                            example=x).model,
                "80 % unstructured, default with data": lambda: kdnb.prune(net, 0.8, data=train).model,
                "80 % unstructured, default without data": lambda: kdnb.prune(net, 0.8).model,
                "80 % unstructured, torch global L1": lambda: _torch_global(net, 0.8)}
        for label, run in runs.items():
            started = time.perf_counter()
            accuracy = evaluate(run(), val)["accuracy"]
            table.setdefault(label, []).append(accuracy)
            print(f"  seed {seed} {label}: {accuracy:.4f} ({time.perf_counter() - started:.1f} s, {uptime()})",
                  flush=True)
        best = max((evaluate(_tp_half(net, x[:1], make()), val)["accuracy"], name) for name, make in
                   importances.items())
        table.setdefault("50 % structured, Torch-Pruning's best importance", []).append(best[0])
        print(f"  seed {seed} Torch-Pruning's best importance: {best[1]} {best[0]:.4f}", flush=True)
    print("| setting | accuracy (mean ± std) |\n|---|---|")
    for label, values in table.items():
        print(f"| {label} | {statistics.mean(values):.4f} ± {statistics.pstdev(values):.4f} |")


def part_solve() -> None:
    import importlib

    reconstruct = importlib.import_module("kdnb.engine.prune.rebuild.reconstruct")
    torch.set_num_threads(THREADS)
    print(f"## solve: exact per-row re-solve vs the refined sweep, random layers; {uptime()}")
    print("| inputs | rows | kept | exact s | sweep s | exact/sweep modelled cost | error sweep / exact |")
    print("|---|---|---|---|---|---|---|")
    for inputs, rows, kept in ((256, 256, 0.2), (256, 256, 0.5), (576, 64, 0.5), (1152, 128, 0.2), (1152, 128, 0.5)):
        torch.manual_seed(0)
        a = torch.randn(4 * inputs, inputs) @ torch.randn(inputs, inputs) * 0.1 + torch.randn(inputs)
        a = torch.cat([a, torch.ones(len(a), 1)], 1).double()
        y = a @ torch.randn(rows, inputs + 1).double().T
        gram, cross, energy = a.T @ a, a.T @ y, (y * y).sum(0)
        support = torch.rand(rows, inputs + 1) < kept
        support[:, -1] = True
        timed = {}
        for f in (reconstruct.solve_rows, reconstruct.sweep_rows):
            start = time.perf_counter()
            w = f(gram, cross, support)
            timed[f.__name__] = (time.perf_counter() - start,
                                 float(reconstruct.row_errors(w, gram, cross, energy).sum()))
        ratio = reconstruct.exact_cost(support) / reconstruct.sweep_cost(support)
        print(f"| {inputs} | {rows} | {kept} | {timed['solve_rows'][0]:.2f} | {timed['sweep_rows'][0]:.2f} | "
              f"{ratio:.2f} | {timed['sweep_rows'][1] / timed['solve_rows'][1]:.4f} |", flush=True)
    print(uptime())


def part_threads() -> None:
    from kdnb.engine.prune.score import stream

    model, loader = _model("resnet18")
    print(f"## threads: one lock-step calibration pass of resnet18 (128 images at 224x224); {uptime()}")
    for threads in (1, 2, 4):
        torch.set_num_threads(threads)
        start = time.perf_counter()
        for _ in stream.each_gram(model, loader, 128):
            pass
        print(f"  {threads} intra-op threads: {time.perf_counter() - start:.1f} s ({uptime()})", flush=True)


def main() -> None:
    if "--one" in sys.argv:
        index = sys.argv.index("--one")
        one(sys.argv[index + 1], sys.argv[index + 2])
        return
    part = _option("--part", "scale")
    if part == "scale":
        part_scale(_option("--models", "mlp,resnet18,resnet50,bert").split(","), _option("--baseline", "") or None,
                   int(_option("--limit", "600")))
    elif part == "accuracy":
        part_accuracy(int(_option("--seeds", "3")))
    elif part == "solve":
        part_solve()
    elif part == "threads":
        part_threads()


if __name__ == "__main__":
    if "--one" in sys.argv:  # one model, in a child process of this bench: it writes no section
        main()
    else:
        report.run(main, modes=("--part", "--models", "--methods"))
