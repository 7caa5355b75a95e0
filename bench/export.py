"""Does a pruned model leave kdnb intact, smaller and faster? `kdnb.export` to every format, dense and pruned.

For the tutorials' MLP, kdnb.models.resnet_small and mobile_cnn, replicas of torchvision's resnet18 and
mobilenet_v2 (torchvision does not import beside this torch) and a tiny BERT built from a transformers config:
dense, unstructured 90 % (L1, masks folded) and structured 50 % (L1). Each is exported to .onnx, .pt2, .pt,
.safetensors (and, for BERT, a save_pretrained directory); the table gives whether the export checked out, its max
difference from torch and its size. Then latency: torch and ONNX Runtime (CPU provider), each timed in the same
alternating rounds, dense vs pruned. Goals: a structured speed-up carries over to ONNX Runtime (>= 0.8 of torch's
ratio); unstructured sparsity gives ONNX Runtime no speed-up (1.00x). The structured cut is also made with
``round_to=8``: ONNX Runtime's CPU convolutions work on blocks of 8 or 16 channels.

    .venv/bin/python bench/export.py [--rounds 30]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

import kdnb
from kdnb.engine.export import is_transformers, onnxruntime_model
from kdnb.engine.table import Table
from kdnb.models import Residual
from timing import alternating_times  # bench/timing.py: this script's folder is on sys.path
import report  # bench/report.py: this script's folder is on sys.path

torch.set_num_threads(1)
FORMATS = (".onnx", ".pt2", ".pt", ".safetensors")


# ---- replicas of torchvision's resnet18 and mobilenet_v2 (same layers and widths) ----

def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act()] if act else []))


def resnet18(num_classes: int = 1000) -> nn.Sequential:
    """torchvision's resnet18: a 7x7 stem, four stages of two BasicBlocks (64, 128, 256, 512), 11.7 M parameters."""
    def block(cin: int, cout: int, stride: int) -> Residual:
        body = nn.Sequential(_conv_bn(cin, cout, 3, stride), _conv_bn(cout, cout, 3, act=None))
        shortcut = _conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None
        return Residual(body, shortcut)

    stages, cin = [], 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        stages += [block(cin, cout, stride), block(cout, cout, 1)]
        cin = cout
    return nn.Sequential(_conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1), *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(512, num_classes))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, 3x3 depthwise, 1x1 project; the input added when the shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        layers = [_conv_bn(cin, mid, 1, act=nn.ReLU6)] if expand != 1 else []
        self.body = nn.Sequential(*layers, _conv_bn(mid, mid, 3, stride, groups=mid, act=nn.ReLU6),
                                  _conv_bn(mid, cout, 1, act=None))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v2(num_classes: int = 1000) -> nn.Sequential:
    """torchvision's mobilenet_v2 (width 1.0): 17 inverted residual blocks, 3.5 M parameters."""
    blocks, cin = [], 32
    for expand, cout, repeats, stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                                          (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(repeats):
            blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    return nn.Sequential(_conv_bn(3, 32, 3, 2, act=nn.ReLU6), *blocks, _conv_bn(320, 1280, 1, act=nn.ReLU6),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, num_classes))


def tiny_bert() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=64, num_labels=2)
    tokens = torch.randint(0, 1000, (8, 32), generator=torch.Generator().manual_seed(0))
    example = {"input_ids": tokens, "attention_mask": torch.ones_like(tokens)}
    return BertForSequenceClassification(config).eval(), example


def models() -> dict[str, tuple[nn.Module, object]]:
    torch.manual_seed(0)
    image = torch.randn(8, 3, 64, 64)
    digits = torch.randn(8, 1, 8, 8)
    return {
        "mlp (tutorials)": (kdnb.models.mlp(64, [256, 256], 10), torch.randn(64, 64)),
        "resnet_small": (kdnb.models.resnet_small(10), digits),
        "mobile_cnn": (kdnb.models.mobile_cnn(10), digits),
        "resnet18 replica": (resnet18(), image),
        "mobilenet_v2 replica": (mobilenet_v2(), image),
        "tiny BERT": tiny_bert(),
    }


# ---- the runs ----

def pruned(model: nn.Module, example: object) -> dict[str, nn.Module | str]:
    """dense, unstructured 90 % (folded) and structured 50 %; a prune kdnb cannot do is its one-line reason."""
    variants: dict[str, nn.Module | str] = {"dense": model.eval()}
    for name, options in (("unstructured 90%", dict(sparsity=0.9)),
                          ("structured 50%", dict(sparsity=0.5, structured=True, example=example)),
                          ("structured 50%, round_to=8", dict(sparsity=0.5, structured=True, example=example,
                                                              round_to=8))):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = kdnb.prune(model, criterion="l1", progress=False, **options)
            variants[name] = kdnb.make_permanent(result.model).eval()
        except Exception as error:  # noqa: BLE001 - the bench reports what kdnb cannot do yet, and goes on
            variants[name] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return variants


def exports(model: nn.Module, example: object, folder: Path) -> list[list[object]]:
    rows = []
    suffixes = (*FORMATS, "") if is_transformers(model) else FORMATS
    for suffix in suffixes:
        try:
            result = kdnb.export(model, folder / f"model{suffix}", example)
            rows.append([suffix or "save_pretrained", "ok", f"{result.max_diff:.1e}", f"{result.bytes:,}"])
        except Exception as error:  # noqa: BLE001 - a failed export is a row of the table, not the end of the bench
            rows.append([suffix or "save_pretrained", f"FAILED: {str(error)[:60]}", "-", "-"])
    return rows


class Timed:
    """One forward on the example, as `alternating_times` calls a model (its argument ignored: the example is bound)."""

    def __init__(self, run, example: object):
        self.run, self.example = run, example

    def eval(self) -> Timed:
        return self

    def __call__(self, _: object) -> object:
        return self.run(self.example)


def latencies(variants: dict[str, nn.Module], example: object, rounds: int) -> dict[str, float]:
    """Median ms of each variant in torch and in ONNX Runtime, all timed in every round."""
    with contextlib.ExitStack() as stack:
        timed = {}
        for name, model in variants.items():
            timed[f"torch {name}"] = Timed(lambda x, m=model: m(**x) if isinstance(x, dict) else m(x), example)
            if isinstance(example, torch.Tensor):
                timed[f"ort {name}"] = Timed(stack.enter_context(onnxruntime_model(model, example, 1)), example)
            else:
                timed[f"ort {name}"] = Timed(_ort_mapping(stack, model, example), example)
        times = alternating_times(timed, torch.empty(0), rounds)
    return {name: statistics.median(t) for name, t in times.items()}


def _ort_mapping(stack: contextlib.ExitStack, model: nn.Module, example: dict):
    """ONNX Runtime on a model that takes keyword inputs (a tokenizer's mapping)."""
    import onnxruntime

    folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
    kdnb.export(model, folder / "model.onnx", example)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]
    return lambda x: session.run(None, {name: x[name].numpy() for name in names})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    rounds = parser.parse_args().rounds
    export_rows, speed_rows, failures = [], [], []
    for name, (model, example) in models().items():
        variants = pruned(model, example)
        runnable = {variant: net for variant, net in variants.items() if isinstance(net, nn.Module)}
        for variant, net in variants.items():
            if not isinstance(net, nn.Module):
                failures.append(f"{name}, {variant}: kdnb.prune failed: {net}")
                export_rows.append([name, variant, "-", f"not pruned ({len(failures)})", "-", "-"])
                continue
            with tempfile.TemporaryDirectory() as folder:
                export_rows += [[name, variant, *row] for row in exports(net, example, Path(folder))]
        times = latencies(runnable, example, rounds)
        for variant in runnable:
            torch_x = times["torch dense"] / times[f"torch {variant}"]
            ort_x = times["ort dense"] / times[f"ort {variant}"]
            speed_rows.append([name, variant, f"{times[f'torch {variant}']:.3f}", f"{torch_x:.2f}x",
                               f"{times[f'ort {variant}']:.3f}", f"{ort_x:.2f}x",
                               "-" if variant == "dense" else f"{ort_x / torch_x:.2f}"])
        print(f"{name}: done", flush=True)
    print()
    print(Table(["model", "variant", "format", "export", "max diff", "bytes"], export_rows,
                notes=[f"({i}) {failure}" for i, failure in enumerate(failures, 1)]).to_text())
    print()
    notes = ["ms: median per batch (image models: batch 8; mlp: 64; BERT: 8 x 32 tokens), 1 thread, torch and ONNX "
             "Runtime timed in the same alternating rounds; x: dense / this variant; carried: ONNX Runtime's x / "
             "torch's (goal for structured >= 0.8)"]
    print(Table(["model", "variant", "torch ms", "torch x", "ORT ms", "ORT x", "carried"], speed_rows,
                notes=notes).to_text())


if __name__ == "__main__":
    report.run(main)
