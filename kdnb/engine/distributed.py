"""Several processes under ``torchrun``: PyTorch's own DistributedDataParallel runs the one loop on every rank.

``torchrun --nproc_per_node=N script.py`` starts N copies of the user's script (RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT in each one's environment). When a process group is up, or kdnb starts the default
one from that environment (gloo on CPU, nccl on CUDA), each run of `kdnb.engine.loop.fit`:

- wraps the trained model in ``DistributedDataParallel``: rank 0's weights are broadcast at the start and the
  gradients averaged over the ranks in ``backward``, so the replicas stay equal;
- gives each rank its shard of the user's ``DataLoader``: a ``DistributedSampler`` with the loader's shuffle,
  drop_last, collate_fn and workers, and a per-rank batch of ``ceil(batch_size / world)``. The loader thus
  describes the *global* run: the same optimizer steps on the same global batches as in a one-process
  notebook, only faster. A loader that already has a ``DistributedSampler`` is one rank's share: used as is;
- in one all-reduce a step (beside DDP's gradient buckets), averages the step's loss terms over the ranks before
  the update (a NaN on one rank is a NaN on all, so all stop at the same step) and agrees on a stop asked on
  any rank (stop button, callbacks) after the previous step, so all end after that same step and no rank
  waits forever on another; sums the epoch's tallies and the sharded validation: every rank logs the same
  History.

Only rank 0 draws, prints, warns or saves (`is_main_process`). There is no process management here.
"""
from __future__ import annotations

import atexit
import contextlib
import contextvars
import inspect
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, IterableDataset, RandomSampler

from kdnb.engine.device import resolve_device
from kdnb.engine.evaluate import evaluate
from kdnb.errors import KdnbError, warn

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# DDP broadcasts the buffers (BatchNorm's running statistics) before every forward unless told not to: a round trip
# a step, which keeps rank 0's, estimated from rank 0's batches alone. kdnb lets each rank estimate its own and
# averages them at each epoch's end (`Ranks.align`). The flag's name in newer torch, and in older:
_NO_FORWARD_BUFFER_SYNC = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                           inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False})
_requested: contextvars.ContextVar[bool | str] = contextvars.ContextVar("kdnb_distributed", default="auto")


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def under_torchrun() -> bool:
    """torchrun's environment for more than one process (``torchrun --nproc_per_node=1`` is one process)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES) and int(os.environ["WORLD_SIZE"]) > 1


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def _together() -> bool:
    """Whether this verb call runs on several processes together (a group is up, and not ``distributed=False``)."""
    return _requested.get() is not False and world_size() > 1


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that draws, prints, warns and saves."""
    return rank() == 0


def check_mode(mode: Any) -> None:
    """``distributed=`` at a verb's entry, before anything changes."""
    if not (mode is True or mode is False or isinstance(mode, str) and mode == "auto"):
        raise KdnbError(f"distributed should be 'auto', True or False, got {mode!r}")
    if mode is True and not (initialized() or under_torchrun()):
        raise KdnbError("distributed=True needs several processes, but there is no process group and no torchrun "
                        "environment: launch the script with `torchrun --nproc_per_node=2 script.py` "
                        "(or call torch.distributed.init_process_group first), or use distributed='auto'")


@contextlib.contextmanager
def mode(value: bool | str) -> Iterator[None]:
    """The ``distributed=`` of one verb call, for every `fit` it makes (a verb may train several times)."""
    token = _requested.set(value)
    try:
        yield
    finally:
        _requested.reset(token)


def join(device: str | torch.device) -> bool:
    """Whether this call runs on several processes; under torchrun without a process group kdnb starts the
    default one (nccl for CUDA, gloo for CPU) and keeps it for the calls that follow."""
    if _requested.get() is False:
        return False
    if not initialized() and under_torchrun():
        device = resolve_device(device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(_close)
    return world_size() > 1


def share(modules: Iterable[Any], device: str | torch.device) -> None:
    """Rank 0's weights and buffers into every rank's copy of each module a verb is given, before it scores,
    caches or prunes anything: what every rank computes from them is then the same (DDP does this for the
    trained model only, and only once training starts)."""
    if not join(device):
        return
    tensors = [t for m in modules if isinstance(m, torch.nn.Module) for t in (*m.parameters(), *m.buffers())]
    broadcast_from_main(tensors)


def shard_range(count: int) -> range:
    """This rank's contiguous share of ``count`` items (``ceil(count / world)`` each, the last ones shorter);
    all of them on one process."""
    if not _together():
        return range(count)
    size = math.ceil(count / world_size())
    return range(min(rank() * size, count), min((rank() + 1) * size, count))


def gather_shards(rows: torch.Tensor, count: int) -> torch.Tensor:
    """Every rank's ``rows`` (its `shard_range` of ``count`` rows, in order) concatenated: the whole ``count`` rows
    on every rank, in one all-gather. One process: ``rows`` as they are."""
    if not _together():
        return rows
    comm, size = _comm_device(), math.ceil(count / world_size())
    padded = torch.zeros((size, *rows.shape[1:]), dtype=rows.dtype, device=comm)
    padded[:len(rows)] = rows.to(comm)
    shards = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(shards, padded)
    return torch.cat(shards)[:count].to(rows.device)


def start(device: torch.device, seed: int | None) -> Local:
    """The ranks of one run: `Local` (one process: nothing to do) or `Ranks` (DistributedDataParallel)."""
    return Ranks(device, 0 if seed is None else seed) if join(device) else LOCAL


def _comm_device() -> torch.device:
    """Where collectives run: the current GPU for nccl, the CPU for gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_from_main(tensors: Iterable[torch.Tensor]) -> None:
    """Rank 0's values of every tensor on every rank, in place: one broadcast per dtype, of the tensors
    flattened into one buffer (each collective is a round trip between the processes, whatever its size).
    One process, or ``distributed=False``: nothing to do."""
    if not _together():
        return
    comm = _comm_device()
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for tensor in tensors:
        if tensor.numel():
            by_dtype.setdefault(tensor.dtype, []).append(tensor)
    for group in by_dtype.values():
        flat = torch.cat([t.detach().reshape(-1).to(comm) for t in group])
        dist.broadcast(flat, 0)
        for tensor, values in zip(group, flat.split([t.numel() for t in group])):
            tensor.data.copy_(values.view_as(tensor))


def _close() -> None:
    if initialized():
        dist.destroy_process_group()


class Local:
    """One process: every hook of the loop leaves things as they are."""

    world = 1

    def shard(self, data: Iterable) -> Iterable:
        return data

    def wrap(self, model: torch.nn.Module, objective: Any) -> torch.nn.Module:
        return model

    def set_epoch(self, data: Iterable, epoch: int) -> None: ...

    def report(self, terms: dict[str, float], interrupt: dict[str, bool], state: Any) -> tuple[dict[str, float], bool]:
        """The step's loss terms as every rank sees them, and whether to stop before its update."""
        return terms, False  # one process stops right after the step that asked (`stops_after_step`)

    def stops_after_step(self, interrupt: dict[str, bool], state: Any) -> bool:
        return interrupt["hit"] or state.stop

    def after_backward(self) -> None: ...

    def agree_to_stop(self, interrupt: dict[str, bool], state: Any) -> bool:
        return interrupt["hit"] or state.stop

    def total(self, correct: int | torch.Tensor, seen: int) -> tuple[int, int]:
        return int(correct), seen

    def slowest(self, seconds: float) -> float:
        return seconds

    def align(self, model: torch.nn.Module) -> None: ...

    def evaluate(self, model: torch.nn.Module, val: Iterable, what: str = "val") -> dict[str, float]:
        return evaluate(model, val, what)


LOCAL = Local()


class Ranks(Local):
    """This process's part of a run over ``world`` processes (see the module docstring)."""

    def __init__(self, device: torch.device, seed: int):
        self.device, self.seed = device, seed
        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        self.comm = _comm_device()
        self.extra: list[torch.nn.Parameter] = []
        self.val_shards: dict[int, tuple[Iterable, int | None]] = {}

    def shard(self, data: Iterable) -> DataLoader:
        """This rank's share of the training loader (see the module docstring for the batch size)."""
        if not isinstance(data, DataLoader) or isinstance(data.dataset, IterableDataset):
            raise KdnbError(f"under torchrun data should be a DataLoader over a map-style dataset (kdnb shards it "
                            f"with a DistributedSampler), got {type(data).__name__}; or pass a DataLoader whose "
                            "sampler is a DistributedSampler")
        batches = data.batch_sampler
        if isinstance(_sampler(data), DistributedSampler):
            return data
        if type(batches) is not BatchSampler:
            raise KdnbError("under torchrun kdnb shards a loader by its batch_size, but this one has a custom "
                            "batch_sampler; give your loader a DistributedSampler (it is then used as is)")
        per_rank = math.ceil(batches.batch_size / self.world)
        if per_rank * self.world != batches.batch_size:
            warn(f"batch_size {batches.batch_size} does not split evenly over {self.world} processes: each takes "
                 f"{per_rank} samples a step, a global batch of {per_rank * self.world}; use a multiple of "
                 f"{self.world} to keep the one-process run's batches")
        sampler = DistributedSampler(data.dataset, num_replicas=self.world, rank=self.rank,
                                     shuffle=isinstance(batches.sampler, RandomSampler), seed=self.seed)
        return _reloaded(data, sampler, per_rank, batches.drop_last)

    def wrap(self, model: torch.nn.Module, objective: Any) -> torch.nn.Module:
        """DDP around the model; the objective's own parameters (e.g. FitNets adapters) start as rank 0's and
        get their gradients averaged by `after_backward`."""
        self.extra = [p for p in objective.parameters() if p.requires_grad] if isinstance(
            objective, torch.nn.Module) else []
        broadcast_from_main([*self.extra, *model.buffers()])  # DDP broadcasts the parameters
        if not any(p.requires_grad for p in model.parameters()):
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True, **_NO_FORWARD_BUFFER_SYNC)

    def set_epoch(self, data: Iterable, epoch: int) -> None:
        sampler = _sampler(data)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)

    def report(self, terms: dict[str, float], interrupt: dict[str, bool], state: Any) -> tuple[dict[str, float], bool]:
        """One all-reduce: each loss term averaged over the ranks (all ranks' objectives report the same
        names), and a stop asked on any rank since its last step (then every rank stops before this update)."""
        *sums, hit, stop = self._all_reduce([*terms.values(), interrupt["hit"], state.stop]).tolist()
        interrupt["hit"], state.stop = hit > 0, stop > 0
        return dict(zip(terms, (total / self.world for total in sums))), bool(hit or stop)

    def stops_after_step(self, interrupt: dict[str, bool], state: Any) -> bool:
        return False  # the next step's `report` (or the epoch's end) agrees on it, on every rank at once

    def after_backward(self) -> None:
        """The objective's own parameters' gradients averaged over the ranks, in one all-reduce."""
        grads = [p.grad for p in self.extra if p.grad is not None]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads]).to(self.comm)
            dist.all_reduce(flat)
            for grad, mean in zip(grads, (flat / self.world).split([g.numel() for g in grads])):
                grad.copy_(mean.view_as(grad))

    def agree_to_stop(self, interrupt: dict[str, bool], state: Any) -> bool:
        """A stop asked on any rank (stop button, a callback) stops every rank after this same step."""
        hit, stop = self._all_reduce([interrupt["hit"], state.stop], dist.ReduceOp.MAX).tolist()
        interrupt["hit"], state.stop = bool(hit), bool(stop)
        return bool(hit or stop)

    def total(self, correct: int | torch.Tensor, seen: int) -> tuple[int, int]:
        """The epoch's correct and seen samples over all ranks."""
        correct, seen = self._all_reduce([correct, seen]).tolist()
        return int(correct), int(seen)

    def slowest(self, seconds: float) -> float:
        """An epoch lasts as long as its slowest rank (and every rank logs the same time)."""
        return float(self._all_reduce([seconds], dist.ReduceOp.MAX)[0])

    def align(self, model: torch.nn.Module) -> None:
        """The same buffers on every rank. During an epoch each rank updates BatchNorm's running statistics from
        its own share of the batches: they are averaged over the ranks (an estimate from all the batches, as
        one process's), in one all-reduce; every other buffer is rank 0's, in one broadcast."""
        stats = [s for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats
                 for s in (m.running_mean, m.running_var)]
        if stats:
            flat = torch.cat([s.reshape(-1) for s in stats]).to(self.comm)
            dist.all_reduce(flat)
            for stat, mean in zip(stats, (flat / self.world).split([s.numel() for s in stats])):
                stat.copy_(mean.view_as(stat))
        averaged = {id(s) for s in stats}
        broadcast_from_main(b for b in model.buffers() if id(b) not in averaged)

    def evaluate(self, model: torch.nn.Module, val: Iterable, what: str = "val") -> dict[str, float]:
        """Loss and accuracy over ``val``, each rank on its shard, summed: the one-process numbers."""
        shard, count = self._val_shard(val)
        result = evaluate(model, shard, what)
        if count is None:  # not shardable: every rank evaluated all of it, identically
            return result
        weighted = [result["loss"] * count, result["accuracy"] * count] if count else [0.0, 0.0]
        loss, correct, total = self._all_reduce([*weighted, count]).tolist()
        return {"loss": loss / total, "accuracy": correct / total} if total else result

    def _val_shard(self, val: Iterable) -> tuple[Iterable, int | None]:
        """Every ``world``-th sample from this rank's index on (no padding, so none is counted twice)."""
        if id(val) not in self.val_shards:
            if isinstance(_sampler(val), DistributedSampler):
                self.val_shards[id(val)] = (val, len(_sampler(val)))
            elif isinstance(val, DataLoader) and val.batch_size and not isinstance(val.dataset, IterableDataset):
                indices = list(range(self.rank, len(val.dataset), self.world))  # type: ignore[arg-type]
                self.val_shards[id(val)] = (_reloaded(val, indices, val.batch_size, False), len(indices))
            else:
                self.val_shards[id(val)] = (val, None)
        return self.val_shards[id(val)]

    def _all_reduce(self, values: list[Any], op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.comm)
        dist.all_reduce(tensor, op=op)
        return tensor.cpu()


def _sampler(loader: Any) -> Any:
    """The sampler that draws a loader's indices: its batch sampler's (a loader built with ``batch_sampler=``,
    e.g. the soft-label cache's, reports a stand-in ``.sampler``)."""
    return getattr(getattr(loader, "batch_sampler", None), "sampler", getattr(loader, "sampler", None))


def _reloaded(loader: DataLoader, sampler: Iterable[int], batch_size: int, drop_last: bool) -> DataLoader:
    """``loader``'s dataset and settings, drawn through ``sampler`` in batches of ``batch_size``."""
    workers = loader.num_workers
    return DataLoader(loader.dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      collate_fn=loader.collate_fn, num_workers=workers, pin_memory=loader.pin_memory,
                      worker_init_fn=loader.worker_init_fn, timeout=loader.timeout,
                      persistent_workers=loader.persistent_workers if workers else False,
                      prefetch_factor=loader.prefetch_factor if workers else None,
                      multiprocessing_context=loader.multiprocessing_context if workers else None)


def checksum(module: torch.nn.Module) -> torch.Tensor:
    """One float64 per parameter and buffer (sum and sum of squares): equal on every rank when the replicas are."""
    tensors = [t.detach().double().cpu() for t in (*module.parameters(), *module.buffers())]
    return torch.stack([torch.stack([t.sum(), (t * t).sum()]) for t in tensors]) if tensors else torch.zeros(0)
