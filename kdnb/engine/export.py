"""Export a model where it runs, then check the export by running what was written.

`export` writes, by the path's suffix (or ``format=``):

- ``.onnx``: ``torch.onnx.export`` (the dynamo exporter, else the TorchScript one), opset `OPSET`, a dynamic
  batch axis named ``batch`` (and ``sequence`` for a transformers model's token inputs); checked in ONNX Runtime's
  CPU provider;
- ``.pt2``: ``torch.export.export`` and ``torch.export.save`` (dynamic batch); checked with ``torch.export.load``;
- a directory, for a ``transformers`` model: ``save_pretrained`` (its config says its widths); checked with
  ``from_pretrained``;
- ``.pt`` / ``.safetensors``: the plain ``state_dict`` and, beside it, a JSON of the layer widths
  (`kdnb.engine.plain_weights`), so ``kdnb.load(path, model=YourNet())`` resizes a structurally pruned model's
  layers; checked by loading it so into a copy.

Every format gets the model with its pruning masks folded into plain weights (`make_permanent`, on a copy), in
eval mode, on the CPU. The files are written into a hidden folder beside the target and moved into place only
when the check passed: a failed export leaves nothing behind, and a file it would replace stays as it was.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from kdnb.engine import plain_weights, serialize
from kdnb.engine.checks import check_model, shown
from kdnb.engine.prune.cut.masks import clone, make_permanent
from kdnb.env import version
from kdnb.errors import KdnbError, first_line, suggest

TOLERANCE = 1e-4  # max |export - torch| on the example, float32
OPSET = 20  # the ONNX opset both exporters write (ONNX Runtime 1.17 and newer run it)
LARGE_BYTES = 1 << 30  # ONNX keeps weights over this in a file beside the model (protobuf's limit is 2 GiB)
STATE_DICT_INSTEAD = "export to .pt or .safetensors (a state_dict, which needs no tracing) instead"

Inputs = tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]  # (positional, keyword) tensors of one call
Runner = Callable[[Inputs], list[torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class Format:
    """One place a model can go: how to write it, how to run what was written, what that needs."""

    name: str
    suffixes: tuple[str, ...]
    label: str  # as a sentence names it
    packages: tuple[str, ...]  # import names of the optional packages it needs
    write: Callable[[nn.Module, Path, Inputs], str]  # returns how it was written
    reload: Callable[[Path, nn.Module], Runner]
    checker: Callable[[], str]  # what runs the written files, for the report
    instead: str  # the format to try when this one fails


@dataclasses.dataclass(frozen=True)
class Exported:
    """What `export` wrote and how its check went. Prints as one line.

    Attributes:
        path: the file (or directory) written.
        format: ``"onnx"``, ``"pt2"``, ``"transformers"``, ``"pt"`` or ``"safetensors"``.
        writer: how it was written (the ONNX exporter and opset, ...).
        checked_by: what ran the written files for the check.
        max_diff: max absolute difference between its outputs and the model's on the example (and on a batch
            of another size), at most `TOLERANCE`.
        bytes: size of all the files written.
        files: every file written (a state_dict's widths JSON too).
    """

    path: Path
    format: str
    writer: str
    checked_by: str
    max_diff: float
    bytes: int
    files: tuple[Path, ...]

    def __str__(self) -> str:
        return (f"exported {self.path.name} ({self.writer}; {_size(self.bytes)}): {self.checked_by} gives the "
                f"model's outputs, max abs diff {self.max_diff:.1e} <= {TOLERANCE:.0e}")

    __repr__ = __str__


def export(model: nn.Module, path: str | os.PathLike, example: Any, *, format: str | None = None) -> Exported:
    """Write ``model`` to ``path`` in a format that runs outside kdnb, run what was written on ``example`` and
    compare its outputs with the model's; return an `Exported` (prints as one line saying so).

    Args:
        model: any ``nn.Module`` (masked, folded, structurally pruned, a ``transformers`` model); not changed.
        path: ``*.onnx`` (ONNX Runtime), ``*.pt2`` (``torch.export``), ``*.pt`` or ``*.safetensors`` (a plain
            state_dict and the layer widths ``kdnb.load(path, model=YourNet())`` needs), or a directory for a
            ``transformers`` model (``save_pretrained``; reload with ``AutoModel...from_pretrained``). Its
            folder must exist; an existing file is replaced only once the export checked out.
        example: one input batch as the model takes it: a tensor, a tuple of tensors (positional arguments)
            or a mapping of tensors (keyword arguments, e.g. a tokenizer's output; ``labels`` is left out).
            The first dimension is the batch; the export accepts any batch size (and, for a transformers model's
            token inputs, any length).
        format: ``"onnx"``, ``"pt2"``, ``"pt"``, ``"safetensors"`` or ``"transformers"``; None: from ``path``.

    Pruning masks are folded into plain weights on a copy (stored zeros: an unstructured model is as fast as
    the dense one in ONNX Runtime; a structurally pruned one is smaller, and faster when each layer keeps a
    multiple of 8 channels: ``kdnb.prune(..., round_to=8)``). The check runs the written
    files on the example and on a batch of another size and requires max |difference| <= 1e-4 (float32). A
    failure is one `KdnbError` naming the layer or op and the format to use instead, and leaves no file behind.
    """
    check_model(model)
    chosen = _check_format(model, path, format)
    target = _check_target(path, chosen)
    inputs = _check_example(example)
    _check_packages(chosen)
    work = _plain_copy(model)
    _check_runs(work, inputs)
    return _export(work, target, chosen, inputs)


# ---- the formats ----

def _write_onnx(model: nn.Module, target: Path, inputs: Inputs) -> str:
    args, kwargs = inputs
    names = [*(_arg_names(args)), *kwargs]
    outputs = _output_names(_call(model, inputs))
    try:
        with _tracked(model) as where, _quiet():
            torch.onnx.export(model, args, str(target), kwargs=kwargs or None, dynamo=True, verbose=False,
                              opset_version=OPSET, input_names=names, output_names=outputs,
                              dynamic_shapes=_dynamic_dims(model, inputs, "batch", "sequence"),
                              external_data=_large(model))
        return f"ONNX opset {OPSET}, dynamo exporter"
    except Exception as error:  # noqa: BLE001 - any exporter failure: the TorchScript exporter may still do it
        dynamo_error, layer = error, where.layer
    _empty(target.parent)
    dims = _dynamic_dims(model, inputs, "batch", "sequence")
    axes = dict(zip(names, dims.values() if isinstance(dims, dict) else dims))
    axes |= {name: {0: "batch"} for name in outputs}
    try:  # the TorchScript exporter traces one run: a branch on the data (TracerWarning) would be frozen in
        with _quiet(), warnings.catch_warnings():
            warnings.simplefilter("error", torch.jit.TracerWarning)
            torch.onnx.export(model, args + ((kwargs,) if kwargs else ()), str(target), dynamo=False,
                              opset_version=OPSET, input_names=names, output_names=outputs, dynamic_axes=axes)
        return f"ONNX opset {OPSET}, TorchScript exporter (the dynamo exporter failed: {_reason(dynamo_error)})"
    except Exception:  # noqa: BLE001 - report the dynamo exporter's error: it names the layer and op
        _empty(target.parent)
        raise _failure(model, "ONNX", dynamo_error, layer, _onnx_instead(model, inputs)) from None


def _reload_onnx(path: Path, model: nn.Module) -> Runner:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return onnx_runner(session)


def onnx_runner(session: Any) -> Runner:
    """Run an ONNX Runtime session on `Inputs` (fed by name), returning its outputs as tensors."""
    wanted = [node.name for node in session.get_inputs()]

    def run(inputs: Inputs) -> list[torch.Tensor]:
        args, kwargs = inputs
        named = dict(zip(_arg_names(args), args)) | kwargs
        feed = {name: named[name].numpy() for name in wanted if name in named}
        if len(feed) != len(wanted):  # the exporter named its inputs itself: feed them in order
            feed = dict(zip(wanted, (t.numpy() for t in [*args, *kwargs.values()])))
        return [torch.from_numpy(out) for out in session.run(None, feed)]

    return run


def _write_pt2(model: nn.Module, target: Path, inputs: Inputs) -> str:
    args, kwargs = inputs
    try:
        with _tracked(model) as where, _quiet():
            program = torch.export.export(model, args, kwargs or None, strict=False,
                                          dynamic_shapes=_dynamic_dims(model, inputs, torch.export.Dim.DYNAMIC,
                                                                       torch.export.Dim.DYNAMIC))
    except Exception as error:  # noqa: BLE001 - whatever torch.export trips on is one line naming the layer
        raise _failure(model, ".pt2 (torch.export)", error, where.layer, STATE_DICT_INSTEAD) from None
    torch.export.save(program, target)
    return "torch.export, dynamic batch" + (" and length" if is_tokens(model, inputs) else "")


def _reload_pt2(path: Path, model: nn.Module) -> Runner:
    with _quiet():
        program = torch.export.load(path).module()
    return lambda inputs: _call(program, inputs)


def _write_pretrained(model: nn.Module, target: Path, inputs: Inputs) -> str:
    with _no_progress_bars():
        model.save_pretrained(target)
    return f"save_pretrained, {type(model).__name__}"


def _reload_pretrained(path: Path, model: nn.Module) -> Runner:
    """The class `AutoModel...from_pretrained` resolves the saved config to: the model's own."""
    with _no_progress_bars():
        reloaded = type(model).from_pretrained(path).eval()
    return lambda inputs: _call(reloaded, inputs)


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers draws a bar per file it writes or reads: noise in the one line an export prints."""
    from transformers.utils import logging as hf_logging

    shown_before = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown_before:
            hf_logging.enable_progress_bar()


def _writer(suffix: str) -> Callable[[nn.Module, Path, Inputs], str]:
    def write(model: nn.Module, target: Path, inputs: Inputs) -> str:
        payload = serialize.dense_payload(model)
        tensors = {key: tensor.contiguous() for key, tensor in payload["tensors"].items()}
        if suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({key: t for key, t in tensors.items() if key not in payload["tied"]}, str(target))
        else:
            torch.save(tensors, target)
        widths = {"format": plain_weights.WIDTHS_FORMAT, "version": plain_weights.WIDTHS_VERSION,
                  "spec": payload["spec"], "tied": payload["tied"]}
        plain_weights.widths_path(target).write_text(json.dumps(widths))
        return f"state_dict + layer widths in {plain_weights.widths_path(target).name}"

    return write


def _reload_state_dict(path: Path, model: nn.Module) -> Runner:
    """Load into a copy whose every value is NaN first: a tensor the file lacks would show in the outputs."""
    skeleton = clone(model)
    with torch.no_grad():
        for tensor in [*skeleton.parameters(), *skeleton.buffers()]:
            if tensor.is_floating_point():
                tensor.fill_(math.nan)
    reloaded = serialize.load(path, model=skeleton).eval()
    return lambda inputs: _call(reloaded, inputs)


FORMATS: dict[str, Format] = {
    "onnx": Format("onnx", (".onnx",), "ONNX", ("onnx", "onnxruntime", "onnxscript"), _write_onnx, _reload_onnx,
                   lambda: f"ONNX Runtime {version('onnxruntime')} (CPU)", "export to .pt2 or .pt instead"),
    "pt2": Format("pt2", (".pt2",), ".pt2 (torch.export)", (), _write_pt2, _reload_pt2,
                  lambda: "torch.export.load", STATE_DICT_INSTEAD),
    "transformers": Format("transformers", (), "a transformers directory", ("transformers",), _write_pretrained,
                           _reload_pretrained, lambda: "from_pretrained", "export to .onnx or .pt2 instead"),
    "pt": Format("pt", (".pt", ".pth"), ".pt (state_dict)", (), _writer(".pt"), _reload_state_dict,
                 lambda: "kdnb.load(path, model=...)", "export to .safetensors or .pt2 instead"),
    "safetensors": Format("safetensors", (".safetensors",), ".safetensors (state_dict)", ("safetensors",),
                          _writer(".safetensors"), _reload_state_dict, lambda: "kdnb.load(path, model=...)",
                          "export to .pt instead"),
}
SUFFIXES = {suffix: fmt for fmt in FORMATS.values() for suffix in fmt.suffixes}


@contextlib.contextmanager
def onnxruntime_model(model: nn.Module, x: torch.Tensor, threads: int) -> Iterator[Callable[[torch.Tensor], Any]]:
    """``model`` exported to ONNX (and checked) in a temporary folder, as a function of an input batch that runs
    it in ONNX Runtime's CPU provider on ``threads`` threads (`kdnb.measure`'s ``runtime="onnxruntime"``)."""
    _check_packages(FORMATS["onnx"])
    import onnxruntime

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        _export(_plain_copy(model), path, FORMATS["onnx"], ((x.detach().cpu(),), {}))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        yield lambda batch: session.run(None, {name: batch.numpy()})


# ---- writing, checking, moving into place ----

def _export(model: nn.Module, target: Path, chosen: Format, inputs: Inputs) -> Exported:
    # torch.export fixes a dimension of size 1: trace on at least 2; check on another batch size (and length)
    trace_inputs = _with_batch(inputs, 2) if _batch_size(inputs) == 1 else inputs
    other = _with_batch(inputs, 2 * _batch_size(inputs))
    if is_tokens(model, inputs):
        length = next(iter(inputs[1].values())).shape[1]
        trace_inputs = _with_length(trace_inputs, 2) if length == 1 else trace_inputs
        other = _with_length(other, length // 2) if length > 3 else other
    expected = [_call(model, inputs), _call(model, other)]
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        staged = staging / target.name
        writer = chosen.write(model, staged, trace_inputs)
        diff = _check(chosen, staged, model, [inputs, other], expected)
        files = _move(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Exported(target, chosen.name, writer, chosen.checker(), diff, sum(f.stat().st_size for f in files),
                    tuple(files))


def _check(chosen: Format, staged: Path, model: nn.Module, batches: list[Inputs],
           expected: list[list[torch.Tensor]]) -> float:
    """Run the written files on each batch; the max |difference| from the model's outputs, or a `KdnbError`."""
    try:
        with _quiet():
            run = chosen.reload(staged, model)
            got = [run(inputs) for inputs in batches]
    except KdnbError:
        raise
    except Exception as error:  # noqa: BLE001 - the written files do not run: say so, and what to use instead
        raise KdnbError(f"the {chosen.label} export was written but {chosen.checker()} cannot run it "
                        f"({_reason(error)}); {chosen.instead}") from None
    worst = 0.0
    for inputs, want, have in zip(batches, expected, got):
        if len(want) != len(have) or any(w.shape != h.shape for w, h in zip(want, have)):
            raise KdnbError(f"the {chosen.label} export gives outputs of shapes {[tuple(h.shape) for h in have]} "
                            f"where the model gives {[tuple(w.shape) for w in want]} (batch of "
                            f"{_batch_size(inputs)}); {chosen.instead}")
        for index, (w, h) in enumerate(zip(want, have)):
            diff = (w.double() - h.double()).abs().max().item() if w.numel() else 0.0
            if not diff <= TOLERANCE:  # NaN too
                raise KdnbError(f"the {chosen.label} export differs from the model by {diff:.2g} (more than "
                                f"{TOLERANCE:.0e}) at output {index} on a batch of {_batch_size(inputs)}; "
                                f"{chosen.instead}")
            worst = max(worst, diff)
    return worst


def _move(staging: Path, target: Path) -> list[Path]:
    """Move the checked files into place: a file replaces its namesake; a directory's files go into it."""
    moved = []
    for entry in sorted(staging.iterdir()):
        final = target.parent / entry.name
        if entry.is_dir():
            final.mkdir(exist_ok=True)
            for file in sorted(entry.iterdir()):
                os.replace(file, final / file.name)
                moved.append(final / file.name)
        else:
            os.replace(entry, final)
            moved.append(final)
    return moved


def _empty(folder: Path) -> None:
    """Remove what a failed try wrote in the staging folder."""
    for entry in folder.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


# ---- the model and its inputs ----

def _plain_copy(model: nn.Module) -> nn.Module:
    """A CPU copy in eval mode with every mask and parametrization folded into a plain weight."""
    return make_permanent(clone(model)).cpu().eval()


def _call(model: nn.Module | Callable[..., Any], inputs: Inputs) -> list[torch.Tensor]:
    """The model's output tensors, flattened as the exporters flatten them (tuples, mappings, ModelOutput)."""
    args, kwargs = inputs
    with torch.no_grad():
        return [leaf for leaf in pytree.tree_leaves(model(*args, **kwargs)) if isinstance(leaf, torch.Tensor)]


def _batch_size(inputs: Inputs) -> int:
    args, kwargs = inputs
    return next(iter([*args, *kwargs.values()])).shape[0]


def _with_batch(inputs: Inputs, size: int) -> Inputs:
    """The same inputs with ``size`` rows: the example's rows repeated, then cut."""
    def resized(t: torch.Tensor) -> torch.Tensor:
        return t.repeat(math.ceil(size / t.shape[0]), *[1] * (t.dim() - 1))[:size]

    args, kwargs = inputs
    return tuple(map(resized, args)), {key: resized(t) for key, t in kwargs.items()}


def _with_length(inputs: Inputs, length: int) -> Inputs:
    """Token inputs ``length`` tokens long: cut, or the tokens repeated."""
    def resized(t: torch.Tensor) -> torch.Tensor:
        return t.repeat(1, math.ceil(length / t.shape[1]), *[1] * (t.dim() - 2))[:, :length]

    return inputs[0], {key: resized(t) for key, t in inputs[1].items()}


def _dynamic_dims(model: nn.Module, inputs: Inputs, batch: Any, sequence: Any) -> tuple | dict:
    """``dynamic_shapes``: dimension 0 of every input is the batch; a transformers model's token inputs also
    vary in length (dimension 1)."""
    args, kwargs = inputs
    if not kwargs:
        return tuple({0: batch} for _ in args)
    dims = {0: batch, 1: sequence} if is_tokens(model, inputs) else {0: batch}
    return {key: dict(dims) for key in kwargs}


def is_tokens(model: nn.Module, inputs: Inputs) -> bool:
    """A transformers model called with keyword inputs of one length (a tokenizer's ``input_ids``, masks...)."""
    args, kwargs = inputs
    return is_transformers(model) and not args and bool(kwargs) and all(t.dim() >= 2 for t in kwargs.values()) \
        and len({t.shape[1] for t in kwargs.values()}) == 1


def _arg_names(args: tuple) -> list[str]:
    return ["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]


def _output_names(outputs: list[torch.Tensor]) -> list[str]:
    return ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]


def _large(model: nn.Module) -> bool:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) > LARGE_BYTES


def is_transformers(model: nn.Module) -> bool:
    """A ``transformers.PreTrainedModel``, asked without importing transformers."""
    return any(cls.__name__ == "PreTrainedModel" and cls.__module__.startswith("transformers.")
               for cls in type(model).__mro__)


# ---- naming what failed ----

class _Where:
    """The innermost layer running when tracing failed (forward hooks on the copy being exported)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.names = {module: name for name, module in model.named_modules()}
        self.stack: list[str] = []

    @property
    def layer(self) -> str | None:
        return self.stack[-1] if self.stack and self.stack[-1] else None

    def enter(self, module: nn.Module, args: Any) -> None:
        if module is self.model:
            self.stack.clear()  # an exporter's next try starts over
        self.stack.append(self.names.get(module, ""))

    def leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.stack:
            self.stack.pop()


@contextlib.contextmanager
def _tracked(model: nn.Module) -> Iterator[_Where]:
    where = _Where(model)
    hooks = [hook for module in model.modules()
             for hook in (module.register_forward_pre_hook(where.enter), module.register_forward_hook(where.leave))]
    try:
        yield where
    finally:
        for hook in hooks:
            hook.remove()


_OP = re.compile(r"(?:torch\.ops\.)?(aten[.:]+\w+)")


def _reason(error: BaseException) -> str:
    """The first line of the innermost error, where torch says what it could not do."""
    while error.__cause__ is not None:
        error = error.__cause__
    return re.sub(r"\x1b\[[0-9;]*m", "", first_line(error))[:200]


def _failure(model: nn.Module, label: str, error: BaseException, layer: str | None, instead: str) -> KdnbError:
    chain, seen = [], error
    while seen is not None:
        chain.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    op = next((match.group(1).replace("::", ".") for text in chain for match in _OP.finditer(text)), None)
    where = f"layer {layer!r} ({type(model.get_submodule(layer)).__name__})" if layer else "the model"
    detail = f" at op {op}" if op else ""
    return KdnbError(f"cannot export to {label}: {where} does not trace{detail}: {_reason(error)}; {instead}")


def _onnx_instead(model: nn.Module, inputs: Inputs) -> str:
    """torch.export traced it (ONNX failed at converting an op): .pt2 works; else only a state_dict does."""
    args, kwargs = inputs
    try:
        with _quiet():
            torch.export.export(model, args, kwargs or None, strict=False)
    except Exception:  # noqa: BLE001 - it does not trace either
        return STATE_DICT_INSTEAD
    return "export to .pt2 (torch.export traces it) or .pt instead"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' progress lines and warnings (torchvision missing, deprecations) are not the user's."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "transformers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _size(count: int) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


# ---- checks at the entry ----

def _check_format(model: nn.Module, path: Any, format: Any) -> Format:
    if not isinstance(path, (str, os.PathLike)):
        raise KdnbError(f"path should be a file name (str or pathlib.Path), got {type(path).__name__}; pass e.g. "
                        "'student.onnx'")
    if format is not None:
        if format not in FORMATS:
            raise KdnbError(f"format={shown(format)} is not one kdnb exports; {suggest(str(format), FORMATS)}")
        chosen = FORMATS[format]
    else:
        suffix = Path(path).suffix.lower()
        if suffix in SUFFIXES:
            chosen = SUFFIXES[suffix]
        elif is_transformers(model) and (not suffix or Path(path).is_dir()):
            chosen = FORMATS["transformers"]
        elif Path(path).is_dir():
            raise KdnbError(f"{str(path)!r} is a directory (an export to a directory is for transformers models); "
                            f"give a file name such as {str(Path(path) / 'model.onnx')!r}")
        else:
            named = f"unknown suffix {suffix!r}" if suffix else "no suffix"
            raise KdnbError(f"{str(path)!r} has {named}; name the file *.onnx (ONNX Runtime), *.pt2 (torch.export), "
                            "*.pt or *.safetensors (a state_dict), a directory for a transformers model, or pass "
                            "format=")
    if chosen.name == "transformers" and not is_transformers(model):
        raise KdnbError(f"format 'transformers' (save_pretrained) needs a transformers model, got "
                        f"{type(model).__name__}; export it to *.onnx, *.pt2 or *.pt instead")
    return chosen


def _check_target(path: str | os.PathLike, chosen: Format) -> Path:
    target = Path(path).expanduser()
    if chosen.name == "transformers" and target.exists() and not target.is_dir():
        raise KdnbError(f"{str(path)!r} is a file; save_pretrained writes a directory: give a new name such as "
                        f"{str(target) + '_pretrained'!r}")
    if chosen.name != "transformers" and target.is_dir():
        raise KdnbError(f"{str(path)!r} is a directory; give a file name such as "
                        f"{str(target / ('model' + chosen.suffixes[0]))!r}")
    folder = target.parent
    if not folder.is_dir():
        raise KdnbError(f"directory {str(folder)!r} does not exist; create it first "
                        f"(Path({str(folder)!r}).mkdir(parents=True))")
    try:  # root may write where the permission bits say no, and a read-only mount refuses everyone: just try
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise KdnbError(f"cannot write to directory {str(folder)!r} ({error.strerror or error}); export to a "
                        "folder you can write to") from None
    return target


def _check_example(example: Any) -> Inputs:
    if isinstance(example, torch.Tensor):
        inputs: Inputs = ((example,), {})
    elif isinstance(example, (tuple, list)) and example:
        inputs = (tuple(example), {})
    elif isinstance(example, Mapping) and example:
        inputs = ((), {str(key): value for key, value in example.items() if key != "labels"})
    else:
        raise KdnbError(f"example should be an input batch (a tensor, a tuple of tensors or a mapping of tensors), "
                        f"got {shown(example)}; pass e.g. example=next(iter(val))[0]")
    tensors = [*inputs[0], *inputs[1].values()]
    if not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in tensors):
        bad = next(t for t in tensors if not (isinstance(t, torch.Tensor) and t.dim() >= 1))
        raise KdnbError(f"example should hold tensors whose first dimension is the batch, got {shown(bad)}; pass "
                        "e.g. example=next(iter(val))[0]")
    if len({t.shape[0] for t in tensors}) > 1:
        raise KdnbError(f"example's tensors have different batch sizes {[t.shape[0] for t in tensors]}; pass one "
                        "batch, every tensor with the same first dimension")
    return tuple(t.detach().cpu() for t in inputs[0]), {k: t.detach().cpu() for k, t in inputs[1].items()}


def _check_packages(chosen: Format) -> None:
    missing = [name for name in chosen.packages if importlib.util.find_spec(name) is None]
    if missing:
        raise KdnbError(f"exporting to {chosen.label} needs {', '.join(missing)}, which is not installed; install "
                        "kdnb's export extra: pip install 'kdnb[export]'")


def _check_runs(model: nn.Module, inputs: Inputs) -> None:
    try:
        _call(model, inputs)
    except Exception as error:  # noqa: BLE001 - the user's forward failing on their example is one line
        args, kwargs = inputs
        if len(args) > 1 and _runs(model, (args[:-1], kwargs)):
            raise KdnbError(f"model fails on example, a tuple of {len(args)} tensors, but runs on all but the last: "
                            "it looks like an (inputs, labels) batch; pass example=batch[0]") from None
        raise KdnbError(f"model fails on example ({type(error).__name__}: {first_line(error)[:200]}); pass an input "
                        "batch the model takes") from None


def _runs(model: nn.Module, inputs: Inputs) -> bool:
    try:
        _call(model, inputs)
    except Exception:  # noqa: BLE001 - any failure: it does not
        return False
    return True
