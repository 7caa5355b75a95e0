"""The calibration set through a model in one pass, layer by layer: what the re-solve and the layer-wise scores read.

A layer-wise method visits the Linear/Conv layers in forward order and needs, at each, the inputs that *all*
calibration batches bring to it in the model as the earlier layers left it (re-solved already). Running the model
from its input up to each layer costs about half a forward pass of the whole calibration set per layer (a
ResNet-18 at 224x224: some twenty passes); SparseGPT instead keeps every sample's activations at the current
block and moves them on block by block, which needs the model cut into blocks.

`Lockstep` does the same for any model, with no cut: each calibration batch runs the model's own ``forward`` in
a thread of its own, and a hook before (or, ``output=True``, after) each visited layer parks that thread until the
caller has read every batch's tensor there and done its work on the layer (re-solved it). So one forward pass of
the calibration set serves every layer, and the activations held are those live at the current layer (what the
forward holds at that point, for every batch at once). Only one thread computes at a time (a lock), so torch's
intra-op threads are never oversubscribed, and the caller's work runs while every thread is parked.

A batch that reaches a visited layer out of order (its forward takes another path) is left out of the layers it
skips; a layer called twice in one forward is read at its first call, as `calibration._run_until` did.
"""
from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from kdnb.engine.device import eval_mode, model_device, to_device
from kdnb.engine.prune.score.calibration import SAMPLES, calibration_batches, forward_order, grouped, solvable

_DONE = "<done>"
THREADS = 4  # forward passes parked at once: the calibration batches are joined into this many chunks
_POLL_S = 0.1  # how often the waiting caller wakes, so that Ctrl-C reaches it


class _Abort(Exception):
    """Raised inside a parked forward pass when the caller stops early: the thread unwinds and ends."""


class Lockstep:
    """Runs ``model`` on every batch in its own thread, all parked at each of ``layers`` in turn.

    ``at(layer)`` waits until every batch has reached ``layer`` (or finished) and returns each batch's input of it
    (output with ``output=True``; None for a batch that never reached it); ``release(layer)`` lets them go on to
    the next. Use it as a context manager: leaving it (also on an error or Ctrl-C) stops and joins every thread.
    Cost: one forward pass of the batches in all; memory: the activations live at the current layer, per batch.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], batches: Sequence[torch.Tensor], output: bool = False):
        self.model, self.layers, self.batches, self.output = model, list(layers), chunks(batches), output
        self.reports: queue.Queue = queue.Queue()
        self.released = {name: threading.Event() for name in self.layers}
        self.compute = threading.Lock()  # one forward segment at a time: no oversubscribed intra-op threads
        self.abort = False
        self.local = threading.local()
        self.position: list[str | None] = [None] * len(self.batches)  # None: running; a layer: parked there
        self.values: list[torch.Tensor | None] = [None] * len(self.batches)
        self.results: list[object] = [None] * len(self.batches)  # what the model returned, per finished batch
        self.threads: list[threading.Thread] = []
        self.stack = ExitStack()

    def __enter__(self) -> Lockstep:
        self.stack.enter_context(eval_mode(self.model))
        for name in self.layers:
            module = self.model.get_submodule(name)
            hook = (module.register_forward_hook(lambda m, a, out, name=name: self._park(name, out)) if self.output
                    else module.register_forward_pre_hook(lambda m, a, name=name: self._park(name, a[0])))
            self.stack.callback(hook.remove)
        device = model_device(self.model)
        for index, x in enumerate(self.batches):
            thread = threading.Thread(target=self._run, args=(index, x, device), daemon=True,
                                      name=f"kdnb-calibration-{index}")
            self.threads.append(thread)
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort = True
        for event in self.released.values():
            event.set()
        for thread in self.threads:
            thread.join()
        self.stack.close()

    def _run(self, index: int, x: torch.Tensor, device: torch.device) -> None:
        self.local.index = index
        try:
            with self.compute, torch.no_grad():
                self.results[index] = self.model(to_device(x, device))
            self.reports.put((index, _DONE, None))
        except _Abort:
            self.reports.put((index, _DONE, None))
        except BaseException as error:  # noqa: BLE001 -- handed to the caller, who re-raises it
            self.reports.put((index, _DONE, error))

    def _park(self, name: str, value: torch.Tensor) -> None:
        index = getattr(self.local, "index", None)
        if index is None or self.released[name].is_set():  # not one of ours, or a second call of a done layer
            return
        if self.abort:
            raise _Abort
        self.reports.put((index, name, value))  # as it is (no_grad already): `finish` compares it to the result
        self.compute.release()  # let the other batches run while this one waits
        try:
            self.released[name].wait()
        finally:
            self.compute.acquire()
        if self.abort:
            raise _Abort

    def at(self, layer: str) -> list[torch.Tensor | None]:
        """Each batch's tensor at ``layer``, once every batch is parked somewhere or done."""
        while any(p is None for p in self.position):
            try:
                index, where, value = self.reports.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if isinstance(value, BaseException):
                raise value
            self.position[index], self.values[index] = where, value
        return [v if p == layer else None for p, v in zip(self.position, self.values)]

    def finish(self) -> list[object]:
        """Lets every batch run to the end of its forward pass; returns what the model returned for each."""
        for event in self.released.values():
            event.set()
        self.position = [None if p != _DONE else p for p in self.position]
        self.at(_DONE)
        return self.results

    def release(self, layer: str) -> None:
        """Lets the batches parked at ``layer`` run on to their next visited layer."""
        for index, where in enumerate(self.position):
            if where == layer:
                self.position[index], self.values[index] = None, None
        self.released[layer].set()


def chunks(batches: Sequence[torch.Tensor], most: int = THREADS) -> list[torch.Tensor]:
    """``batches`` joined, in order, into at most ``most`` tensors (where their shapes allow): every park and
    release of a thread costs a wake-up, which on a loaded machine takes milliseconds, so a small model's many
    batches would spend more time waking threads than computing."""
    batches = list(batches)
    if len(batches) <= most or len({b.shape[1:] for b in batches}) != 1 or not all(
            isinstance(b, torch.Tensor) for b in batches):
        return batches
    size = -(-len(batches) // most)
    return [torch.cat(batches[i:i + size]) for i in range(0, len(batches), size)]


@contextmanager
def lockstep(model: nn.Module, layers: Sequence[str], batches: Sequence[torch.Tensor], output: bool = False
             ) -> Iterator[Lockstep]:
    """`Lockstep` as a ``with`` block."""
    with Lockstep(model, layers, batches, output) as stream:
        yield stream


# Rows of a layer's input matrix (samples x positions) that its Gram matrix reads at most: every one up to
# ROWS_FLOOR, else at least ROWS_PER_INPUT per input column. A conv early in a ResNet at 224x224 has ~400 rows per
# input column on 128 images; its Gram matrix (rows x d^2) then costs more than the forward pass. The rows kept
# are drawn uniformly (seeded: the same rows on every call), as SparseGPT samples its calibration tokens.
ROWS_FLOOR = 2**16
ROWS_PER_INPUT = 32
EXACT_WIDTH = 512  # layers of up to this many inputs take their products in fp64, larger ones in the model's dtype


def row_budget(rows: int, width: int) -> int:
    """How many of a layer's ``rows`` input rows its statistics read, for ``width`` input columns."""
    return min(rows, max(ROWS_FLOOR, ROWS_PER_INPUT * width))


def _kept_rows(count: int, share: float, batch: int, device: torch.device) -> torch.Tensor | None:
    """The rows of one batch a subsampled Gram reads (None: all), the same on every call for the same batch."""
    if share >= 1.0:
        return None
    generator = torch.Generator().manual_seed(batch)
    return torch.randperm(count, generator=generator)[:max(1, round(share * count))].sort().values.to(device)


@torch.no_grad()
def statistics(module: nn.Module, inputs: Sequence[torch.Tensor | None], outputs: Sequence[torch.Tensor | None] | None,
               ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """``(A^T A, A^T Y, rows)`` of one layer from each batch's input (and output) tensor: ``A`` the input matrix
    with a column of ones last (`calibration.as_matrix`), ``Y`` the outputs as rows (`calibration.output_matrix`);
    a `calibration.grouped` conv's one conv-group at a time, ``(groups, d+1, d+1)`` and ``(groups, d+1, out /
    groups)``. Rows beyond `row_budget` are subsampled (a conv: output positions, the same for ``A`` and ``Y``).
    Products in the model's dtype, summed in fp64; a conv's from its unfolded input as it comes, ``(d, positions)``
    per sample, never copied into rows. Cost: ``rows x d^2`` multiply-adds (``rows`` after subsampling); memory
    ``(d+1)^2`` plus one batch's unfolded input.
    """
    present = [i for i, x in enumerate(inputs) if x is not None and (outputs is None or outputs[i] is not None)]
    groups = module.groups if grouped(module) else 1
    counts = {i: _row_count(module, inputs[i]) for i in present}
    width = module.weight[0].numel() + 1
    share = row_budget(sum(counts.values()), width) / max(1, sum(counts.values()))
    gram: torch.Tensor | int = 0
    cross: torch.Tensor | int = 0
    rows = 0
    for i in present:
        a, y = _columns(module, inputs[i], None if outputs is None else outputs[i])  # (samples, d, positions)
        if width <= EXACT_WIDTH:  # small: fp64 products cost nothing and match a float64 least squares
            a, y = a.double(), (y.double() if y is not None else None)
        index = _kept_rows(a.shape[2], share, i, a.device)
        if index is not None:
            a, y = a[:, :, index], (y[:, :, index] if y is not None else None)
        g, c = _products(a, y, groups)
        gram = gram + g
        cross = cross + c if c is not None else cross
        rows += a.shape[0] * a.shape[2]
    return gram, (cross if outputs is not None else None), rows  # type: ignore[return-value]


def _columns(module: nn.Module, x: torch.Tensor, y: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's input and output as ``(samples, features, positions)``: a Linear's rows are one sample each
    (positions 1), a 1x1 conv reads its input as it is, another conv its unfolded patches (`calibration.as_matrix`'s
    columns)."""
    if isinstance(module, nn.Linear):
        a = x.reshape(-1, x.shape[-1])[:, :, None]
        return a, (y.reshape(-1, y.shape[-1]).to(a)[:, :, None] if y is not None else None)
    pointwise = all(k == 1 for k in module.kernel_size) and all(s == 1 for s in module.stride) and \
        all(p == 0 for p in module.padding)
    if pointwise:
        a = x.flatten(2)
    elif isinstance(module, nn.Conv1d):
        a = as_matrix_columns(module, x.unsqueeze(2), (1, *module.kernel_size), (1, *module.stride),
                              (0, *module.padding), (1, *module.dilation))
    else:
        a = as_matrix_columns(module, x, module.kernel_size, module.stride, module.padding, module.dilation)
    return a, (y.flatten(2).to(a) if y is not None else None)


def as_matrix_columns(module: nn.Module, x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int],
                      padding: Sequence[int], dilation: Sequence[int]) -> torch.Tensor:
    """``torch.nn.functional.unfold`` of a conv's input: ``(samples, in_channels x kernel, positions)``."""
    return torch.nn.functional.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)


def _row_count(module: nn.Module, x: torch.Tensor) -> int:
    """Rows of `calibration.as_matrix` of ``x``: samples x output positions."""
    if isinstance(module, nn.Linear):
        return x.numel() // x.shape[-1]
    return x.shape[0] * math.prod(_positions(module, x.shape[2:]))


def _positions(module: nn.Module, size: Sequence[int]) -> list[int]:
    return [(s + 2 * p - d * (k - 1) - 1) // st + 1 for s, k, st, p, d in
            zip(size, module.kernel_size, module.stride, module.padding, module.dilation)]


def _by_group(a: torch.Tensor, groups: int) -> torch.Tensor:
    """``(samples, features, positions)`` as ``(groups, features / groups, samples x positions)``."""
    samples, width, positions = a.shape
    return a.reshape(samples, groups, width // groups, positions).permute(1, 2, 0, 3).reshape(
        groups, width // groups, samples * positions)


def _products(a: torch.Tensor, y: torch.Tensor | None, groups: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[A 1]^T [A 1]`` and ``[A 1]^T Y`` in fp64 (per conv-group for ``groups`` > 1) from ``a`` (samples, d,
    positions) and ``y`` (samples, out, positions), without copying ``A`` into rows or appending the ones."""
    samples, width, positions = a.shape
    parts = _by_group(a, groups)  # (groups, d, samples x positions): one copy, then one matrix product
    products = parts @ parts.transpose(1, 2)
    sums = parts.sum(2, keepdim=True)  # (groups, d, 1): A^T 1
    corner = torch.full((groups, 1, 1), float(samples * positions), dtype=a.dtype, device=a.device)
    gram = torch.cat([torch.cat([products, sums], 2), torch.cat([sums.transpose(1, 2), corner], 2)], 1).double()
    cross = None
    if y is not None:
        outs = _by_group(y, groups)  # (groups, out / groups, samples x positions)
        cross = torch.cat([parts @ outs.transpose(1, 2), outs.sum(2)[:, None, :]], 1).double()
    return (gram, cross) if groups > 1 else (gram[0], None if cross is None else cross[0])


def each_gram(model: nn.Module, data: Iterable, samples: int = SAMPLES, ones: bool = False, groups: bool = False,
              progress: Callable[[int, int], None] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """``(weight name, A^T A)`` of every re-solvable layer in forward order, one at a time (fp64, ``d x d``;
    ``ones``: with the ones column last, ``d+1``; ``groups``: also each `calibration.grouped` conv's, ``(groups,
    d, d)``), from one `Lockstep` pass of the first ``samples`` samples of ``data``; ``progress(done, total)``
    after each layer. Memory: the caller holds one layer's matrix at a time, unless it keeps them."""
    batches = calibration_batches(data, samples)
    layers = [name for name in forward_order(model, batches[0][:1])  # one sample shows the order
              if solvable(model.get_submodule(name)) or groups and grouped(model.get_submodule(name))]
    if progress is not None:
        progress(0, len(layers))
    with lockstep(model, layers, batches) as stream:
        for done, name in enumerate(layers):
            gram = statistics(model.get_submodule(name), stream.at(name), None)[0]
            yield f"{name}.weight" if name else "weight", gram if ones else gram[..., :-1, :-1]
            del gram
            stream.release(name)
            if progress is not None:
                progress(done + 1, len(layers))
