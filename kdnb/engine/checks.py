"""Checks of user input that turn deep torch tracebacks into one-line errors naming the fix.

Each check looks at one argument, once, at the public entry, before anything changes; a message names
the argument, shows the value and says what to pass instead. Drawing a batch to look at never moves the
user's shuffling: `first_batch` puts every random generator back as it found it.
"""
from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from kdnb.engine.device import eval_mode, model_device, to_device
from kdnb.errors import KdnbError, first_line, is_integer, is_number, suggest  # noqa: F401 - the checks' words
from kdnb.engine.events import EVENTS
from kdnb.engine import batches
from kdnb.engine.batches import Split, split_batch


def shown(value: Any, limit: int = 40) -> str:
    """A value as a message shows it: its repr when short, else its type."""
    text = repr(value)
    return text if len(text) <= limit and "\n" not in text else f"a {type(value).__name__}"


def check_model(model: Any, what: str = "model") -> torch.nn.Module:
    """An ``nn.Module`` whose tensors hold values (not the meta device)."""
    if not isinstance(model, torch.nn.Module):
        raise KdnbError(f"{what} should be a torch.nn.Module, got {type(model).__name__}; "
                        "pass the network itself, e.g. kdnb.models.mlp(64, [256], 10)")
    if any(t.is_meta for t in _tensors(model)):
        raise KdnbError(f"{what} is on the meta device (its weights hold no values); make it real first: "
                        f"{what}.to_empty(device='cpu') then load_state_dict(...)")
    return model


def _tensors(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()


def check_trainable(params: list[torch.nn.Parameter], what: str = "model") -> None:
    """Something to train: a frozen model or one without parameters would make the optimizer fail."""
    if not params:
        raise KdnbError(f"{what} has no trainable parameters (none, or all requires_grad=False); set some "
                        f"trainable first: for p in {what}.parameters(): p.requires_grad_(True)")


def check_loader(data: Any, what: str = "data") -> Iterable:
    """A DataLoader (or any re-iterable of batches) that yields at least one batch."""
    if isinstance(data, (torch.Tensor, Iterator, str, bytes, Mapping)) or not hasattr(data, "__iter__"):
        raise KdnbError(
            f"{what} should be a torch DataLoader of (inputs, labels) batches, got {type(data).__name__}; "
            "wrap tensors with DataLoader(TensorDataset(x, y), batch_size=64)"
        )
    try:
        if len(data) == 0:
            raise KdnbError(f"{what} is empty (0 batches); check the dataset and that batch_size <= its size "
                            "when drop_last=True")
    except TypeError:
        pass  # an iterable without len: checked when the first batch is drawn
    return data


def _generators(loaders: Iterable[Any]) -> list[torch.Generator]:
    """The shuffle generators a DataLoader's next epoch draws from (its own, its sampler's)."""
    found: list[torch.Generator] = []
    for loader in loaders:
        sampler = getattr(loader, "sampler", None)
        batch_sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
        for owner in (loader, sampler, batch_sampler):
            generator = getattr(owner, "generator", None)
            if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
                found.append(generator)
    return found


def rng_state(*loaders: Any) -> Callable[[], None]:
    """Record every random state a call may move (Python, NumPy, torch, CUDA, the loaders' shuffle
    generators); the returned function puts them all back."""
    python, numpy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    generators = [(g, g.get_state()) for g in _generators(loaders)]

    def restore() -> None:
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        for generator, state in generators:
            generator.set_state(state)

    return restore


@contextlib.contextmanager
def rng_preserved(*loaders: Any) -> Iterator[None]:
    """Inside, draw batches freely; afterwards the loaders shuffle as if nothing had been drawn."""
    restore = rng_state(*loaders)
    try:
        yield
    finally:
        restore()


def first_batch(data: Iterable, what: str = "data") -> Any:
    """The first batch of ``data``, drawn without moving its shuffling (or any other RNG)."""
    with rng_preserved(data):
        try:
            for batch in data:
                return batch
        except (KdnbError, KeyboardInterrupt):
            raise
        except Exception as error:  # noqa: BLE001 - the user's dataset or collate failed
            raise KdnbError(f"{what} failed to give its first batch: {type(error).__name__}: {first_line(error)}; "
                            f"check the dataset's __getitem__ and the loader's collate_fn") from None
    raise KdnbError(f"{what} is empty (it yielded no batch); check the dataset and the loader's batch_size")


def numbered_batches(data: Iterable, where: Callable[[int], str]) -> Iterator[tuple[int, Any]]:
    """``enumerate(data)``, with a failure of the user's dataset or collate_fn as one line naming the batch
    (``where(index)`` says which); its cause stays chained."""
    iterator, index = iter(data), 0
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (KdnbError, KeyboardInterrupt):
            raise
        except Exception as error:  # noqa: BLE001
            raise KdnbError(f"the data failed to give {where(index)}: {type(error).__name__}: {first_line(error)}; "
                            "check the dataset's __getitem__ and the loader's collate_fn") from error
        yield index, batch
        index += 1


def check_positive(name: str, value: Any, integer: bool = False) -> None:
    if not (is_integer(value) if integer else is_number(value)) or not value > 0 or \
            (not integer and not math.isfinite(value)):
        kind = "integer" if integer else "number"
        raise KdnbError(f"{name} should be a positive {kind}, got {shown(value)}; pass e.g. {name}="
                        f"{'5' if integer else '0.001'}")


def check_temperature(temperature: Any) -> float:
    """The T of soft labels softmax(logits / T): a finite number > 0. The one check of distill, prune's
    fine-tuning by distillation and the temperature explorer."""
    if not is_number(temperature) or not 0 < temperature < math.inf:
        raise KdnbError(f"temperature should be a number > 0 (soft labels are softmax(logits / T)), "
                        f"got {shown(temperature)}; pass e.g. temperature=4.0")
    return float(temperature)


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise KdnbError(f"{name} should be True or False, got {shown(value)}; pass {name}=True or {name}=False")


def _check_factory(name: str, value: Any, example: str) -> None:
    """None or a function (not a name, not a class to be instantiated by kdnb)."""
    if value is None:
        return
    if isinstance(value, str) or not callable(value):
        raise KdnbError(f"{name} should be None or a function, got {shown(value)}; pass e.g. {name}={example}")


def check_callbacks(callbacks: Any) -> list[object]:
    """A list, tuple or other iterable of subscribers (objects with on_step_end, ... methods)."""
    if callbacks is None:
        return []
    if isinstance(callbacks, (str, bytes, Mapping)) or not isinstance(callbacks, Iterable):
        raise KdnbError(f"callbacks should be a list of subscribers, got {shown(callbacks)}; pass e.g. "
                        "callbacks=[MyCallback()] with a subclass of kdnb.engine.events.Callback")
    subscribers = list(callbacks)
    for index, subscriber in enumerate(subscribers):
        if subscriber is None:
            continue
        if isinstance(subscriber, type):
            raise KdnbError(f"callbacks[{index}] is the class {subscriber.__name__}, not a subscriber; "
                            f"pass an instance: callbacks=[{subscriber.__name__}()]")
        if not any(callable(getattr(subscriber, event, None)) for event in EVENTS):
            raise KdnbError(f"callbacks[{index}] = {shown(subscriber)} has none of the methods "
                            f"{', '.join(EVENTS)}; pass an instance of a kdnb.engine.events.Callback subclass")
    return subscribers


def check_settings(settings: Any) -> None:
    """Every training setting (`kdnb.engine.loop.Settings`), each on its own terms."""
    optimizer = settings.optimizer
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer) and \
            (isinstance(optimizer, str) or not callable(optimizer)):
        raise KdnbError(f"optimizer should be None, a torch.optim.Optimizer or a factory params -> optimizer, "
                        f"got {shown(optimizer)}; pass e.g. optimizer=lambda p: torch.optim.SGD(p, lr=0.1)")
    check_positive("lr", settings.lr)
    scheduler = settings.scheduler
    if scheduler is not None and scheduler != "cosine" and (isinstance(scheduler, str) or not callable(scheduler)):
        raise KdnbError(f"scheduler should be None, 'cosine' (the lr annealed to 0 over the run) or a factory "
                        f"optimizer -> scheduler, got {shown(scheduler)}; pass e.g. scheduler='cosine'")
    check_bool("amp", settings.amp)
    if settings.grad_clip is not None:
        check_positive("grad_clip", settings.grad_clip)
    seed = settings.seed
    if seed is not None and not (is_integer(seed) and -(2**63) <= seed < 2**63):
        raise KdnbError(f"seed should be an integer or None, got {shown(seed)}; pass e.g. seed=0 "
                        "(None leaves the random generators alone)")
    check_callbacks(settings.callbacks)


def check_loss(loss: Any) -> None:
    """None (cross-entropy) or a function ``loss(logits, labels)``; a loss class must be instantiated."""
    if isinstance(loss, type):
        raise KdnbError(f"loss is the class {loss.__name__}; pass an instance: loss={loss.__name__}()")
    _check_factory("loss", loss, "torch.nn.CrossEntropyLoss(label_smoothing=0.1)")


def check_batch(batch: Any, what: str = "data") -> Split:
    """``(args, kwargs, labels or None)`` of one batch (`kdnb.engine.batches.split_batch`), or an error saying
    what the batch should look like. ``what`` names where the batch came from: "data", "val", "data (batch 3
    of epoch 1)"."""
    try:
        args, kwargs, y = split_batch(batch)
    except TypeError:
        raise KdnbError(f"{what}: a batch should be (inputs, labels) tensors or a mapping of the model's keyword "
                        f"inputs and 'labels', got {type(batch).__name__}; use a DataLoader over a dataset whose "
                        "items are (x, y)") from None
    if not (args and isinstance(args[0], torch.Tensor)) and not batches.tensors(args, kwargs):  # the usual first
        got = type(args[0]).__name__ if args else f"keys {sorted(map(str, kwargs))[:6]}"
        raise KdnbError(f"{what}: the inputs should be tensors, got {got}; make the dataset return tensors, "
                        "e.g. torch.as_tensor(x, dtype=torch.float32)")
    if y is not None and not isinstance(y, torch.Tensor):
        raise KdnbError(f"{what}: the labels should be a tensor, got {type(y).__name__}; make the dataset return "
                        "tensors, e.g. torch.as_tensor(y)")
    if y is not None and y.dim() == 0:
        raise KdnbError(f"{what} gives one sample at a time (labels of shape ()), not batches; pass "
                        "DataLoader(dataset, batch_size=64) (batch_size=None turns batching off)")
    return args, kwargs, y


def check_labels(y: torch.Tensor, logits_shape: torch.Size | tuple[int, ...], where: str) -> None:
    """Class-index labels of logits of ``logits_shape``: integers, one per input (batch,) or, for sequence
    logits (batch, tokens, classes), one per token (batch, tokens); each in 0..classes-1 or -100 (a position
    that does not count, as torch's cross-entropy ignores it)."""
    classes, rows = logits_shape[-1], logits_shape[0]
    integer = not (y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool)
    shaped = (y.dim() == 1 and y.shape[0] == rows) or (len(logits_shape) == 3 and y.shape == logits_shape[:-1])
    if not (integer and shaped):
        if integer and y.dim() == 1:
            raise KdnbError(f"labels {where}: {y.shape[0]} labels for {rows} inputs; check the dataset "
                            "returns one label per input")
        wanted = f"({rows},)" + (f" or {tuple(logits_shape[:-1])}" if len(logits_shape) == 3 else "")
        raise KdnbError(f"labels {where} should be an integer tensor of class indices of shape {wanted}, got dtype "
                        f"{y.dtype} and shape {tuple(y.shape)}; convert them with y.long() (one index per sample)")
    if y.numel():
        low, high = torch.aminmax(y)
        low, high = int(low), int(high)
        if low == batches.IGNORE_INDEX:
            counted = y[y != batches.IGNORE_INDEX]
            low = int(counted.min()) if counted.numel() else 0
        if low < 0 or high >= classes:
            raise KdnbError(f"labels out of range {where}: found {low}..{high} but the model outputs "
                            f"{classes} classes; fix the labels or give the last layer one output per class")


def logits_of(model: torch.nn.Module, args: tuple, kwargs: dict, what: str = "model") -> torch.Tensor:
    """The model's logits on one batch's inputs, (batch, classes) or per token (batch, tokens, classes), or an
    error naming what the model did instead."""
    out = batches.logits_of(output_of(model, args, kwargs, what))
    if not out.dtype.is_floating_point or out.dim() not in (2, 3):
        raise KdnbError(f"{what} should return float logits of shape (batch, classes) or (batch, tokens, classes), "
                        f"got shape {tuple(out.shape)} {out.dtype}; make the model end with "
                        "nn.Linear(features, classes), or pass logits=lambda output: ... to pick them")
    rows = batches.batch_size(args, kwargs)
    if out.shape[0] != rows:
        raise KdnbError(f"{what} returned {out.shape[0]} rows of logits for a batch of {rows} inputs; "
                        "check that its forward keeps the batch dimension first")
    return out


@torch.no_grad()
def check_model_fits_data(model: torch.nn.Module, batch: Any, device: torch.device, what: str = "model",
                          data_name: str = "data") -> int:
    """Run ``model`` on one batch (eval mode, weights untouched) and check logits against labels.

    Returns the number of classes the model outputs.
    """
    args, kwargs, y = check_batch(batch, data_name)
    with eval_mode(model):
        out = logits_of(model, *to_device((args, kwargs), device), what)
    if y is not None:
        check_labels(y, out.shape, f"in {data_name}'s first batch")
    return out.shape[-1]


def check_labels_in_range(data: Any, num_classes: int, what: str = "data") -> bool:
    """Check every label at once when the dataset holds them as a tensor (cheap), else only batch one.
    Returns whether that covered every batch's labels for the whole run (1-D class indices of a TensorDataset,
    batched by the default collate), so the loop need not check them batch by batch."""
    dataset = getattr(data, "dataset", None)
    tensors = getattr(dataset, "tensors", None)
    if not (tensors and len(tensors) > 1 and not tensors[1].dtype.is_floating_point and tensors[1].numel()):
        return False
    low, high = int(tensors[1].min()), int(tensors[1].max())
    if low < 0 or high >= num_classes:
        raise KdnbError(f"labels out of range: {what}'s dataset has labels {low}..{high} but the model "
                        f"outputs {num_classes} classes; fix the labels or give the last layer one output "
                        "per class")
    labels = tensors[1]
    return (labels.dim() == 1 and labels.dtype not in (torch.bool, torch.complex64, torch.complex128)
            and getattr(data, "collate_fn", None) is torch.utils.data.default_collate)


def check_fraction(name: str, value: Any, low: float = 0.0, high: float = 1.0, closed: bool = False,
                   example: str = "0.5") -> float:
    """A real number in [low, high) (``closed``: [low, high]), not a bool, a string or NaN."""
    inside = is_number(value) and math.isfinite(value) and low <= value and (value <= high if closed else value < high)
    if not inside:
        interval = f"[{low:g}, {high:g}{']' if closed else ')'}"
        raise KdnbError(f"{name} should be a number in {interval}, got {shown(value)}; pass e.g. {name}={example}")
    return float(value)


def check_sparsity(value: Any, name: str = "sparsity") -> float:
    """A fraction of the prunable weights to remove, in [0, 1): `kdnb.prune`, `masks_at`, the sparsity explorer."""
    return check_fraction(name, value, example="0.5")


def check_sparsities(sparsities: Any) -> list[float]:
    """A non-empty list of sparsities, each in [0, 1) (`kdnb.sensitivity`)."""
    if isinstance(sparsities, (str, bytes)) or not isinstance(sparsities, Iterable):
        raise KdnbError(f"sparsities should be a list of fractions in [0, 1), got {shown(sparsities)}; "
                        "pass e.g. sparsities=[0.5, 0.9]")
    sparsities = list(sparsities)
    if not sparsities:
        raise KdnbError("sparsities is empty; pass the sparsities to try, e.g. sparsities=[0.5, 0.9]")
    return [check_sparsity(s, f"sparsities[{i}]") for i, s in enumerate(sparsities)]


def check_layer_names(layers: Any) -> list[str] | None:
    """None (every layer) or a non-empty list of parameter or layer names (`kdnb.sensitivity`)."""
    if layers is not None and (isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable)
                               or not list(layers) or not all(isinstance(n, str) for n in layers)):
        raise KdnbError(f"layers should be None (every layer) or a non-empty list of names, got "
                        f"{shown(layers)}; pass e.g. layers=['0.weight'] (see model.named_parameters())")
    return None if layers is None else list(layers)


def check_pattern(pattern: Any) -> None:
    """None or an N:M pattern ``"N:M"`` with 0 < N < M (keep N of every M consecutive weights)."""
    if pattern is None:
        return
    parts = pattern.split(":") if isinstance(pattern, str) else []
    numbers = [int(p) for p in parts if p.strip().isdigit()] if len(parts) == 2 else []
    if len(numbers) != 2 or not 0 < numbers[0] < numbers[1]:
        raise KdnbError(f"pattern should be 'N:M' (keep N of every M consecutive weights, 0 < N < M), got "
                        f"{shown(pattern)}; pass e.g. pattern='2:4' with sparsity=0.5")


def check_count(name: str, value: Any, minimum: int = 0, example: str = "2") -> int:
    """An integer >= ``minimum`` (not a bool, a float or a string)."""
    if not is_integer(value) or value < minimum:
        raise KdnbError(f"{name} should be an integer >= {minimum}, got {shown(value)}; pass e.g. {name}={example}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """One of the names in ``choices`` (a suggestion when it is close to one)."""
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise KdnbError(f"unknown {name} {shown(value)}; {suggest(str(value), choices)} (pass {name}={choices[0]!r})")
    return value


def check_example(example: Any, what: str = "example", empty: bool = False) -> Any:
    """An input batch: a tensor, a tuple of tensors (several positional inputs) or a mapping (keyword inputs),
    real-valued or integer, batch dimension first, at least one row (``empty``: zero rows allowed, as a tracer
    may take them). Returned as given."""
    try:
        args, kwargs = batches.example_inputs(example)
    except TypeError:
        args, kwargs = (), {}
    found = batches.tensors(args, kwargs)
    if not found:
        raise KdnbError(f"{what} should be an input batch (a tensor, a tuple of tensors or a mapping of keyword "
                        f"inputs, batch first), got {shown(example)}; pass e.g. {what}=next(iter(train_loader))[0]")
    for tensor in found:
        if tensor.dim() == 0 or (tensor.shape[0] == 0 and not empty):
            raise KdnbError(f"{what} should hold at least one sample, batch dimension first, got shape "
                            f"{tuple(tensor.shape)}; pass e.g. {what}=x[:8]")
        if tensor.dtype == torch.bool or tensor.dtype.is_complex:
            raise KdnbError(f"{what} should hold real numbers (or integer token ids), got dtype {tensor.dtype}; "
                            f"convert it, e.g. {what}.float()")
    return example


def check_labelled(batch: Any, labels: Any, what: str, why: str) -> None:
    """Labels in the batch where ``why`` (training, a gradient, an accuracy) needs them; a mapping batch's
    missing key is named."""
    if labels is not None:
        return
    if isinstance(batch, Mapping):
        raise KdnbError(f"{what}'s batches have no 'labels' key (keys: {sorted(map(str, batch))[:6]}), but {why} "
                        "needs labels; add them to each batch as 'labels' (or pass inputs=... to read them)")
    raise KdnbError(f"{what}'s batches have no labels, but {why} needs them; pass a loader of (inputs, labels) "
                    "batches")


def check_data_fits(model: torch.nn.Module, data: Any, what: str, labels: str | None = None,
                    tensor: str | None = None, first: Any = None) -> int | None:
    """``data``'s first batch runs through ``model`` (eval mode, on the model's device, no RNG moved).

    ``labels`` (why they are needed: training, a gradient, an accuracy) asks for labelled batches and float
    logits they are in range of. Without it only the inputs are read (scoring, calibration): any output will
    do (``tensor``, why logits are needed, asks for an output with logits), and labels are checked when the
    output is logits. ``first``: the first batch, when the caller drew it already. Returns the number of classes,
    when known."""
    check_loader(data, what)
    here = model_device(model)
    batch = to_device(first_batch(data, what) if first is None else first, here)
    args, kwargs, y = check_batch(batch, what)
    if labels is not None:
        check_labelled(batch, y, what, labels)
    else:
        with eval_mode(model), torch.no_grad():
            out = output_of(model, args, kwargs, f"model (on {what}'s first batch)")
        check_tensor_output(out, tensor)
        logits = out if isinstance(out, torch.Tensor) else None
        if y is None or logits is None or logits.dim() not in (2, 3) or y.dim() != logits.dim() - 1:
            return None
    num_classes = check_model_fits_data(model, batch, here, data_name=what)
    check_labels_in_range(data, num_classes, what)
    return num_classes


def check_tensor_output(out: Any, why: str | None) -> None:
    """Logits in the output (`kdnb.engine.batches.logits_of`), where ``why`` (e.g. "structured pruning compares
    outputs") needs them; None: anything."""
    if why is not None:
        batches.logits_of(out)


def output_of(model: torch.nn.Module, args: tuple, kwargs: dict, what: str = "model") -> Any:
    """``model(*args, **kwargs)``, whatever it returns, or one line saying how the user's forward failed."""
    try:
        return batches.call_model(model, args, kwargs)
    except (KdnbError, KeyboardInterrupt):
        raise
    except Exception as error:  # noqa: BLE001 - the user's forward, any exception
        raise KdnbError(f"{what} failed on an input batch of shape {batches.describe(args, kwargs)}: "
                        f"{type(error).__name__}: {first_line(error)} -- check that the model's input size matches "
                        "the data") from None


class ModelState:
    """Everything an in-place call may change in a model, to put back exactly: each submodule's class (a
    parametrization swaps it), attributes, parameter/buffer/submodule/hook dicts (their contents, in the same
    dict objects: a hook handle points at them), and each tensor's values, shape, device, requires_grad and
    gradient, in the same tensor objects (an optimizer holds the Parameters)."""

    def __init__(self, model: torch.nn.Module):
        self.modules, self.classes = [], []
        tensors: dict[int, torch.Tensor] = {}
        for module in model.modules():
            attributes = dict(vars(module))
            contents = {name: (list(value.items()) if isinstance(value, dict) else set(value))
                        for name, value in attributes.items() if isinstance(value, (dict, set))}
            self.modules.append((module, type(module), attributes, contents))
            if _parametrized(module):  # its class is its own (torch.nn.utils.parametrize): folding edits it
                self.classes.append((type(module), dict(vars(type(module)))))
            for tensor in [*module._parameters.values(), *module._buffers.values()]:
                if isinstance(tensor, torch.Tensor):
                    tensors[id(tensor)] = tensor
        self.tensors = [(t, t.detach().clone(), t.requires_grad, None if t.grad is None else t.grad.detach().clone())
                        for t in tensors.values()]

    def restore(self) -> None:
        for kind, attributes in self.classes:
            for name, value in attributes.items():
                if name not in vars(kind):
                    setattr(kind, name, value)
        for module, kind, attributes, contents in self.modules:
            module.__class__ = kind
            now = vars(module)
            for name in [name for name in now if name not in attributes]:
                del now[name]
            for name, value in attributes.items():
                if name in contents:
                    value.clear()
                    value.update(contents[name])
                now[name] = value
        with torch.no_grad():
            for tensor, data, requires_grad, grad in self.tensors:
                tensor.data = data
                tensor.requires_grad_(requires_grad)
                tensor.grad = grad


def _parametrized(module: torch.nn.Module) -> bool:
    return isinstance(getattr(module, "parametrizations", None), torch.nn.ModuleDict)


@contextlib.contextmanager
def restored_on_error(model: torch.nn.Module) -> Iterator[ModelState]:
    """Inside, change ``model`` freely (mask it, re-solve it, delete channels, move it); if anything raises,
    a KeyboardInterrupt too, ``model`` is put back exactly as it came in (`ModelState`) and the exception
    goes on. An in-place verb that fails leaves no trace."""
    state = ModelState(model)
    try:
        yield state
    except BaseException:
        state.restore()
        raise
