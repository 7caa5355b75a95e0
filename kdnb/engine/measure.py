"""How big and how fast a model is: parameters, sparsity, MACs, bytes on disk, latency, accuracy.

`measure` looks at one model, `compare` puts several side by side with ratios to the first.
Every number but latency is deterministic, so the printed text is stable (nbval compares it);
latency stays on its own ``latency`` line. Latency is the median of repeated, warmed-up passes, and
a measurement whose repeats disagree (interquartile range over NOISY_SPREAD of the median) says so
on that line instead of passing noise off as a fact.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from kdnb.engine import batches
from kdnb.engine.batches import split_batch
from kdnb.engine.checks import (check_example, check_labels_in_range, check_loader, check_model, check_model_fits_data,
                                first_batch, output_of)
from kdnb.engine.device import eval_mode, model_device, resolve_device, to_device
from kdnb.errors import KdnbError, suggest
from kdnb.engine.evaluate import evaluate
from kdnb.env import version
from kdnb.engine.prune.graph.groups import prunable_attributes  # the weights `sparsity` counts
from kdnb.engine import export, serialize  # modules: serialize -> prune (its package) -> pipeline -> measure
from kdnb.engine.table import Table, format_value

Inputs = tuple[tuple, dict]  # a model's (args, kwargs) on one batch
RUNTIMES = ("torch", "onnxruntime")
NOISY_SPREAD = 0.25  # latency_spread above this: the machine was busy while timing, the median is unsure


@dataclasses.dataclass(frozen=True)
class Measurement:
    """What `measure` found. All counts are of the plain model `kdnb.save` would write (pruning masks folded).

    Attributes:
        params: number of parameters.
        nonzero_params: parameters that are not zero.
        sparsity: fraction of zeros among the weights of Linear and Conv layers and the input projections of
            ``nn.MultiheadAttention`` (the prunable weights; biases, BatchNorm and other parameters left out).
        overall_sparsity: fraction of zeros among all parameters, ``1 - nonzero_params / params``.
        macs: multiply-accumulates per sample of the matrix products and convolutions
            (``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2).
        nonzero_macs: the theoretical MACs of a sparse model: each Linear/Conv layer's (and attention
            projection's) MACs times the density (fraction of non-zeros) of its weight, other MACs as they
            are (Blalock et al. 2020,
            "What is the state of neural network pruning?").
        bytes_dense: size of the `kdnb.save` file with every tensor stored dense.
        bytes: size of the `kdnb.save` file (sparse tensors stored compactly).
        latency_ms: median wall time of one forward pass over a batch, in milliseconds.
        latency_spread: interquartile range of the timed passes / their median (0: all equal); above
            ``NOISY_SPREAD`` the latency line flags the measurement as noisy.
        batch_size, device, threads: the batch, device and ``torch.get_num_threads()`` of the timing.
        accuracy: top-1 accuracy over the labelled data, None without labels (sequence outputs: over the
            tokens that count, a causal LM's logits at t against token t + 1).
        perplexity: exp(mean per-token cross-entropy) over labelled sequence outputs (language models,
            token classifiers); None otherwise.
        runtime: what ran the timed passes: ``"torch"``, or ``"onnxruntime <version>"`` (the model exported to
            ONNX, timed in ONNX Runtime's CPU provider).
    """

    params: int
    nonzero_params: int
    sparsity: float
    overall_sparsity: float
    macs: int
    nonzero_macs: int
    bytes_dense: int
    bytes: int
    latency_ms: float
    batch_size: int
    device: str
    threads: int
    accuracy: float | None = None
    latency_spread: float = 0.0
    perplexity: float | None = None
    runtime: str = "torch"

    @property
    def latency_noisy(self) -> bool:
        return self.latency_spread > NOISY_SPREAD

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def latency_line(self) -> str:
        noisy = f"; {_noisy(self.latency_spread)}" if self.latency_noisy else ""
        return f"latency         {self.latency_ms:.3f} ms/batch (batch {self.batch_size}, {self._where()}){noisy}"

    def _where(self) -> str:
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        where = f"{self.device}, {threads}" if self.device == "cpu" else self.device
        return where if self.runtime == "torch" else f"{where}, {self.runtime}"

    def _rows(self) -> list[tuple[str, str]]:
        return [
            ("params", format_value(self.params)),
            ("nonzero params", format_value(self.nonzero_params)),
            ("sparsity", f"{_percent(self.sparsity)} of Linear/Conv weights, {_percent(self.overall_sparsity)} "
                         "of all parameters"),
            ("MACs", f"{format_value(self.macs)} per sample"),
            ("nonzero MACs", f"{format_value(self.nonzero_macs)} per sample"),
            ("bytes", f"{format_value(self.bytes)} (kdnb.save); {format_value(self.bytes_dense)} dense"),
            ("accuracy", format_value(self.accuracy)),
            *([("perplexity", format_value(self.perplexity))] if self.perplexity is not None else []),
        ]

    def __repr__(self) -> str:
        return "\n".join(f"{name:<15} {value}" for name, value in self._rows()) + "\n" + self.latency_line()

    def _repr_html_(self) -> str:
        return Table(["measure", "value"], self._rows(), notes=[self.latency_line()]).to_html()


def measure(model: nn.Module, data_or_example: Iterable | torch.Tensor, *, batch_size: int | None = None,
            device: str | torch.device | None = None, repeats: int = 30, warmup: int = 5,
            runtime: str = "torch") -> Measurement:
    """Measure ``model``'s size, cost, speed and (with labels) accuracy; the model is not changed.

    Args:
        model: any ``nn.Module``.
        data_or_example: a ``DataLoader`` of ``(inputs, labels)``, ``(x1, ..., xn, labels)`` or mappings
            with ``"labels"`` (accuracy over all of it; timing on its first batch) or of bare inputs, or an
            example input batch (a tensor, a tuple of tensors or a mapping of keyword inputs, batch first; no
            accuracy).
        batch_size: time a batch of this many samples, drawn from the data (rows repeated when the data
            has fewer); None: the first batch / the example as given.
        device: where to time and evaluate; None: the model's own device. Another device measures a copy.
        repeats: timed forward passes; the latency is their median.
        warmup: untimed forward passes first (caches, allocators, lazy initialisation).
        runtime: "torch", or "onnxruntime": time the model exported to ONNX (`kdnb.export`, checked) in ONNX
            Runtime's CPU provider on as many threads as torch uses. ONNX Runtime runs stored zeros like any
            weight: unstructured sparsity does not make it faster; structured pruning (fewer channels) does, once
            each layer keeps a multiple of 8 channels (``kdnb.prune(..., round_to=8)``; bench/export.py).

    Timing runs in eval mode under ``torch.inference_mode()``, synchronising CUDA around each pass.
    ``sparsity`` is the fraction of zeros among the weights of Linear and Conv layers and attention input
    projections (the prunable weights); ``overall_sparsity`` counts all parameters. MACs come from
    ``torch.utils.flop_counter.FlopCounterMode``: matrix products and convolutions, not elementwise ops.
    See `Measurement` for each field.
    """
    check_model(model)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise KdnbError(f"batch_size should be a positive integer or None, got {batch_size!r}; pass e.g. batch_size=64")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise KdnbError(f"repeats should be a positive integer, got {repeats!r}; pass e.g. repeats=30")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise KdnbError(f"warmup should be a non-negative integer, got {warmup!r}; pass e.g. warmup=5")
    if runtime not in RUNTIMES:
        raise KdnbError(f"runtime should be 'torch' or 'onnxruntime', got {runtime!r}; "
                        f"{suggest(str(runtime), RUNTIMES)}")
    home = _full(model_device(model))
    target = home if device is None else _full(resolve_device(device))
    if runtime == "onnxruntime" and target.type != "cpu":
        raise KdnbError(f"runtime='onnxruntime' times ONNX Runtime's CPU provider, but the model would run on "
                        f"{target}; pass device='cpu'")
    net = model if target == home else copy.deepcopy(model).to(target)

    loader, labelled = None, False
    if _is_example(data_or_example):
        inputs = batches.example_inputs(check_example(data_or_example, "data_or_example"))
    else:
        loader = check_loader(data_or_example, "data_or_example")
        first = first_batch(loader, "data_or_example")
        try:
            args, kwargs, y = split_batch(first)
        except TypeError:
            raise KdnbError(f"data_or_example should give input batches as tensors, (inputs, labels) or mappings, "
                            f"got a batch of type {type(first).__name__}; pass a DataLoader or an example input "
                            "tensor") from None
        inputs, labelled = (args, kwargs), y is not None
    if not batches.tensors(*inputs) or batches.batch_size(*inputs) == 0:
        raise KdnbError(f"measure needs input batches as tensors (batch first), got {batches.describe(*inputs)}; "
                        "pass a DataLoader of (inputs, labels) or an example input tensor")
    inputs = to_device(_batch_of(inputs, loader, batch_size), target)

    with eval_mode(net):
        if labelled:
            num_classes = check_model_fits_data(net, first, target)
            check_labels_in_range(loader, num_classes)
        else:
            output_of(net, *inputs)
        with torch.no_grad():  # not inference mode: FlopCounterMode fails there on weight_norm's parametrization
            macs, nonzero_macs = _macs(net, inputs)
        with torch.inference_mode():
            if runtime == "onnxruntime":
                with export.onnxruntime_model(net, _one_tensor(inputs), torch.get_num_threads()) as exported:
                    latency, spread = _latency_ms(exported, inputs, target, repeats, warmup)
            else:
                latency, spread = _latency_ms(net, inputs, target, repeats, warmup)
            scores = evaluate(net, loader) if labelled else {}

    params, nonzero, weights, zero_weights = parameter_counts(model)
    return Measurement(
        params=params, nonzero_params=nonzero,
        sparsity=zero_weights / weights if weights else 0.0,
        overall_sparsity=1 - nonzero / params if params else 0.0,
        macs=macs, nonzero_macs=nonzero_macs,
        bytes_dense=serialize.file_size(model, compact=False), bytes=serialize.file_size(model),
        latency_ms=latency, batch_size=batches.batch_size(*inputs), device=_device_name(target),
        threads=torch.get_num_threads(), accuracy=scores.get("accuracy"), latency_spread=spread,
        perplexity=scores.get("perplexity"),
        runtime="torch" if runtime == "torch" else f"onnxruntime {version('onnxruntime')}",
    )


def _full(device: torch.device) -> torch.device:
    """'cuda' -> 'cuda:N' (the current GPU), so two names of one device compare equal."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _device_name(device: torch.device) -> str:
    return f"{device} {torch.cuda.get_device_name(device)}" if device.type == "cuda" else str(device)


def _one_tensor(inputs: Inputs) -> torch.Tensor:
    """The one input tensor ONNX Runtime's timing feeds, or a one-line refusal naming what the model takes."""
    args, kwargs = inputs
    if len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor):
        raise KdnbError(f"runtime='onnxruntime' times a model of one input tensor, but this one takes "
                        f"{batches.describe(args, kwargs)}; use runtime='torch' (kdnb.export writes such a model "
                        "to ONNX and checks it)")
    return args[0]


def _is_example(value: Any) -> bool:
    """An example input batch rather than a loader: a tensor, a mapping, or a tuple of tensors."""
    return isinstance(value, (torch.Tensor, Mapping)) or (
        isinstance(value, tuple) and bool(value) and all(isinstance(item, torch.Tensor) for item in value))


def _batch_of(inputs: Inputs, loader: Iterable | None, batch_size: int | None) -> Inputs:
    """The inputs to time: as given (``batch_size`` None), else ``batch_size`` rows drawn from the loader's
    batches in order, rows repeated when it has fewer."""
    if batch_size is None:
        return inputs
    parts, count = [], 0
    for batch in (loader if loader is not None else [None]):
        part = inputs if batch is None else batches.inputs_of(batch)
        parts.append(part)
        count += batches.batch_size(*part)
        if count >= batch_size:
            break

    def joined(values: list[Any]) -> Any:
        if not isinstance(values[0], torch.Tensor) or values[0].dim() == 0:
            return values[0]
        rows = torch.cat(values)
        return rows.repeat(math.ceil(batch_size / rows.shape[0]), *[1] * (rows.dim() - 1))[:batch_size]

    args = tuple(joined([part[0][i] for part in parts]) for i in range(len(parts[0][0])))
    return args, {key: joined([part[1][key] for part in parts]) for key in parts[0][1]}


def parameter_counts(model: nn.Module) -> tuple[int, int, int, int]:
    """(parameters, non-zero parameters, prunable weights, zero prunable weights) of ``model`` as
    `kdnb.save` writes it (pruning masks folded). A parameter shared by two modules (tied weights) counts once."""
    params = nonzero = weights = zero_weights = 0
    seen = {}  # holding the tensors keeps their keys unique
    for _, module in serialize.plain_modules(model):
        for name, tensor, is_param in serialize.module_tensors(module):
            key = (tensor.device, tensor.data_ptr(), tuple(tensor.shape), tensor.stride())
            if is_param and key not in seen:
                seen[key] = tensor
                zeros = tensor.numel() - int(torch.count_nonzero(tensor))
                params += tensor.numel()
                nonzero += tensor.numel() - zeros
                if name in prunable_attributes(module):
                    weights += tensor.numel()
                    zero_weights += zeros
    return params, nonzero, weights, zero_weights


def _cpu_attention_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    """torch's CPU kernel of scaled_dot_product_attention, which FlopCounterMode does not know: the formula it
    uses for the CUDA kernels (q k^T, then the weighted sum of v)."""
    return flop_counter.sdpa_flop_count(query.shape, key.shape, value.shape)


_cpu_attention_flops._get_raw = True  # type: ignore[attr-defined]  # called with the tensors, not shapes
_UNCOUNTED = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def _macs(model: nn.Module, inputs: Inputs) -> tuple[int, int]:
    """(MACs, nonzero MACs) per sample: FlopCounterMode's FLOPs / 2, per layer scaled by weight density.
    ``nn.MultiheadAttention`` runs its plain path while counting (its fused inference kernel is invisible to
    the counter), and its projections' zeros are counted per token of the inputs it was called with."""
    tokens: dict[nn.Module, tuple[int, int, int]] = {}

    def remember(module, args, kwargs):  # (query, key, value) positional or by keyword; embed dims last
        q, k, v = (args + tuple(kwargs.get(n) for n in ("query", "key", "value")[len(args):]))[:3]
        tokens[module] = (q.numel() // q.shape[-1], k.numel() // k.shape[-1], v.numel() // v.shape[-1])

    hooks = [m.register_forward_pre_hook(remember, with_kwargs=True) for m in model.modules()
             if isinstance(m, nn.MultiheadAttention)]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False, custom_mapping=_UNCOUNTED) as counter:
            batches.call_model(model, *inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for hook in hooks:
            hook.remove()
    total = counter.get_total_flops()
    per_module = counter.get_flop_counts()  # keys: root class name, then dotted submodule path
    root = type(model).__name__
    sparse_saving = 0.0
    # A layer used at two places is counted under one of its names: look it up under all of them.
    for path, module in serialize.plain_modules(model, remove_duplicate=False):
        flops = sum(per_module.get(f"{root}.{path}" if path else root, {}).values())
        if flops and isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            weight = next(tensor for name, tensor, _ in serialize.module_tensors(module) if name == "weight")
            sparse_saving += flops * (1 - int(torch.count_nonzero(weight)) / max(weight.numel(), 1))
    for module, counts in tokens.items():
        sparse_saving += _attention_zero_flops(module, counts)
    n = batches.batch_size(*inputs)
    return round(total / 2 / n), round((total - sparse_saving) / 2 / n)


def _attention_zero_flops(module: nn.MultiheadAttention, tokens: tuple[int, int, int]) -> float:
    """FLOPs an ``nn.MultiheadAttention``'s zero weights would save: 2 per zero weight per token it projects
    (q, k, v projections on the query's, key's, value's tokens; the output projection on the query's)."""
    weights = dict((name, tensor) for name, tensor, _ in serialize.module_tensors(module))
    if module._qkv_same_embed_dim:
        projections = weights["in_proj_weight"].chunk(3)
    else:
        projections = [weights[f"{p}_proj_weight"] for p in "qkv"]
    out = next(tensor for name, tensor, _ in serialize.module_tensors(module.out_proj) if name == "weight")
    zeros = [w.numel() - int(torch.count_nonzero(w)) for w in (*projections, out)]
    return 2.0 * (zeros[0] * tokens[0] + zeros[1] * tokens[1] + zeros[2] * tokens[2] + zeros[3] * tokens[0])


def _latency_ms(model: Callable[..., Any], inputs: Inputs, device: torch.device, repeats: int,
                warmup: int) -> tuple[float, float]:
    """(median ms, interquartile range / median) of ``repeats`` timed passes after ``warmup`` untimed ones.
    The median ignores the few passes a busy machine slows down; the spread says how busy it was."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for i in range(warmup + repeats):
        sync()
        start = time.perf_counter()
        batches.call_model(model, *inputs)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (median, median, median)
    return median * 1000, (q3 - q1) / median if median > 0 else 0.0


def _noisy(spread: float) -> str:
    return (f"NOISY: the repeats spread over {100 * spread:.0f}% of the median (machine busy?); "
            "measure again, or with more repeats")


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def _ratio(first: float | None, this: float | None) -> float | None:
    """first / this: how many times smaller (or faster) this model is than the first."""
    return first / this if first is not None and this else None


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Several `Measurement`s side by side; ratios are the first model's value / this model's."""

    measurements: dict[str, Measurement]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One dict per model: its `Measurement` fields, ``model``, and the ratios to the first model
        ``params_x`` (nonzero params), ``macs_x`` (nonzero MACs), ``bytes_x`` and ``speedup`` (latency)."""
        first = next(iter(self.measurements.values()))
        return [{"model": name, **m.as_dict(),
                 "params_x": _ratio(first.nonzero_params, m.nonzero_params),
                 "macs_x": _ratio(first.nonzero_macs, m.nonzero_macs),
                 "bytes_x": _ratio(first.bytes, m.bytes),
                 "speedup": _ratio(first.latency_ms, m.latency_ms)}
                for name, m in self.measurements.items()]

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {row["model"]: row for row in self.rows}

    def latency_line(self) -> str:
        rows = self.rows
        same = len({(r["batch_size"], r["device"], r["threads"], r["runtime"]) for r in rows}) == 1
        parts = []
        for i, r in enumerate(rows):
            where = "" if same else f" (batch {r['batch_size']}, {Measurement._where(self.measurements[r['model']])})"
            speed = f" ({r['speedup']:.2f}x)" if i and r["speedup"] is not None else ""
            parts.append(f"{r['model']} {r['latency_ms']:.3f} ms{speed}{where}")
        first = self.measurements[rows[0]["model"]]
        tail = f"; per batch of {first.batch_size}, {first._where()}" if same else ""
        noisy = [m for m in self.measurements.values() if m.latency_noisy]
        if noisy:
            tail += f"; {_noisy(max(m.latency_spread for m in noisy))}"
        return "latency  " + ", ".join(parts) + tail

    def table(self) -> Table:
        """The deterministic table (latency is in the notes' last line)."""
        def times(r: float | None) -> str:
            return "-" if r is None else f"{r:.2f}x"

        rows = [[r["model"], r["accuracy"], r["params"], r["nonzero_params"], _percent(r["sparsity"]), r["macs"],
                 r["nonzero_macs"], r["bytes"], times(r["params_x"]), times(r["macs_x"]), times(r["bytes_x"])]
                for r in self.rows]
        first = rows[0][0]
        notes = [f"x: {first}'s value / this model's (params x: nonzero params; MACs x: nonzero MACs; "
                 "bytes x: kdnb.save file size); sparsity: zeros among Linear/Conv weights"]
        if any(r["runtime"] != "torch" and r["nonzero_macs"] < r["macs"] for r in self.rows):
            notes.append("ONNX Runtime multiplies stored zeros like any weight: unstructured sparsity does not speed "
                         "it up (1.00x); fewer channels (structured pruning, round_to=8) do")
        notes.append(self.latency_line())
        return Table(["model", "accuracy", "params", "nonzeros", "sparsity", "MACs", "nz MACs", "bytes",
                      "params x", "MACs x", "bytes x"], rows, notes=notes)

    def __repr__(self) -> str:
        return self.table().to_text()

    def _repr_html_(self) -> str:
        return self.table().to_html()


_MEASURE_KWARGS = ("batch_size", "device", "repeats", "warmup", "runtime")


def compare(models: dict[str, nn.Module], data: Iterable | torch.Tensor, **measure_kwargs: Any) -> Comparison:
    """Measure each model on the same ``data`` and put them side by side, with ratios to the FIRST model.

    Args:
        models: ``{"name": model, ...}``, the reference first (e.g. teacher, then students).
        data: as `measure`'s ``data_or_example``.
        **measure_kwargs: passed to `measure` (batch_size, device, repeats, warmup, runtime).

    Returns:
        Comparison: prints as a table; ``.rows`` / ``.as_dict()`` give the numbers.
    """
    if not isinstance(models, dict) or not models:
        raise KdnbError(f"models should be a non-empty dict {{name: model}}, got {type(models).__name__}; "
                        "pass e.g. kdnb.compare({'teacher': teacher, 'student': student}, val)")
    for key in measure_kwargs:
        if key not in _MEASURE_KWARGS:
            raise KdnbError(f"compare got an unknown option {key!r}; {suggest(key, _MEASURE_KWARGS)}")
    for name, model in models.items():
        check_model(model, f"models[{name!r}]")
    return Comparison({str(name): measure(model, data, **measure_kwargs) for name, model in models.items()})
