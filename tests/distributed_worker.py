"""One rank of tests/test_distributed.py, started by ``torchrun --nproc_per_node=2`` (it is not a test itself).

Runs the verbs as a user's script would (kdnb starts the gloo process group from torchrun's environment)
and saves, per rank, what the test compares: parameter checksums, histories, bars drawn, warnings shown.
"""
import os
import signal
import sys
import warnings

import torch
import torch.multiprocessing
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import kdnb
from kdnb.engine.distributed import checksum
from kdnb.engine.events import Callback


def digits(samples: int, batch_size: int, shuffle: bool = False) -> DataLoader:
    """The first ``samples`` digits, in order: the global batches of one process and of two are then the same."""
    train, _ = kdnb.datasets.load("digits", batch_size=batch_size, seed=0)
    x, y = train.dataset.tensors
    return DataLoader(TensorDataset(x[:samples], y[:samples]), batch_size=batch_size, shuffle=shuffle)


def nets() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return kdnb.models.mlp(64, [64], 10), kdnb.models.mlp(64, [32], 10)


def runs(distributed: bool | str, batch_size: int) -> dict[str, dict]:
    """train, distill (cached, live, fitnets), prune(finetune=1): the calls a one-process run makes too."""
    data, val = digits(256, batch_size), digits(200, 50)
    out = {}
    net, student = nets()
    history = kdnb.train(net, data, val=val, epochs=2, distributed=distributed)
    out["train"] = {"model": net, "history": history}
    net.eval()  # the teacher from here on
    for cache in (True, False):
        res = kdnb.distill(net, student, data, val=val, epochs=1, cache=cache, distributed=distributed)
        out[f"distill_cache={cache}"] = {"model": res.student, "history": res.history}
    res = kdnb.distill(net, student, data, val=val, epochs=1, method="fitnets", features=[("1", "1")],
                       distributed=distributed)  # trains adapters 32 -> 64 beside the student: averaged too
    out["distill_fitnets"] = {"model": res.student, "history": res.history}
    res = kdnb.prune(net, sparsity=0.5, criterion="taylor", data=data, val=val, finetune=1, distributed=distributed)
    out["prune"] = {"model": res.model, "history": res.history}
    return {name: {"checksum": checksum(r["model"]), "steps": r["history"].steps, "epochs": r["history"].epochs,
                   "status": r["history"].status} for name, r in out.items()}


class Interrupt(Callback):
    """The stop button pressed in one process only: SIGINT to itself after its second step."""

    def on_step_end(self, state):
        if state.step == 2 and int(os.environ["RANK"]) == 1:
            os.kill(os.getpid(), signal.SIGINT)


class NanOnRankOne(torch.nn.Module):
    """A model whose loss turns NaN on rank 1 only, at its third step."""

    def __init__(self):
        super().__init__()
        self.net, self.calls = torch.nn.Linear(64, 10), 0

    def forward(self, x):
        self.calls += self.training
        bad = self.training and self.calls == 3 and int(os.environ["RANK"]) == 1
        return self.net(x) * (float("nan") if bad else 1.0)


class CountingTeacher(torch.nn.Module):
    """A teacher that counts the samples it labels (kdnb's copies of it count into the same list)."""

    labelled = [0]

    def __init__(self, teacher: torch.nn.Module):
        super().__init__()
        self.teacher = teacher

    def forward(self, x):
        CountingTeacher.labelled[0] += len(x)
        return self.teacher(x)


def cache_labels(distributed: bool | str, batch_size: int = 64) -> int:
    """Samples the teacher labels in a cached distillation of 256 samples (the checks' first batch included)."""
    CountingTeacher.labelled[0] = 0
    net, student = nets()
    kdnb.distill(CountingTeacher(net).eval(), student, digits(256, batch_size), epochs=1, cache=True,
                 distributed=distributed)
    return CountingTeacher.labelled[0]


def rank_data(samples: int, batch_size: int) -> DataLoader:
    """A different slice of digits on each rank: scores computed from it would differ from rank to rank."""
    train, _ = kdnb.datasets.load("digits", batch_size=batch_size, seed=0)
    x, y = train.dataset.tensors
    start = samples * int(os.environ["RANK"])
    return DataLoader(TensorDataset(x[start:start + samples], y[start:start + samples]), batch_size=batch_size)


def pruned_from_own_data() -> dict[str, dict]:
    """Data-driven criteria on each rank's own data: rank 0's scores and re-solved weights are everyone's."""
    data, out = rank_data(256, 64), {}
    for name, options in (("obs", dict(criterion="obs")), ("taylor_structured", dict(criterion="taylor",
                                                                                      structured=True))):
        torch.manual_seed(0)
        result = kdnb.prune(kdnb.models.mlp(64, [32], 10), sparsity=0.5, data=data, **options)
        out[name] = {"checksum": checksum(result.model), "shapes": [p.shape for p in result.model.parameters()]}
    return out


def batchnorm(batch_size: int) -> dict:
    """BatchNorm's running statistics: each rank updates its own during an epoch; rank 0's are everyone's after it."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 10))
    history = kdnb.train(net, digits(256, batch_size, shuffle=True), epochs=2)
    return {"checksum": checksum(net), "status": history.status, "epochs": history.epochs}


def stops(batch_size: int) -> dict[str, dict]:
    """A NaN on one rank, an interrupt on one rank, a user loader with its own DistributedSampler."""
    data = digits(256, batch_size)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nan = kdnb.train(NanOnRankOne(), data, epochs=2)
    net = kdnb.models.mlp(64, [32], 10)
    stopped = kdnb.train(net, data, epochs=3, callbacks=[Interrupt()])
    again = kdnb.train(net, data, epochs=1)  # a second DDP over the same parameters, after the first is gone
    sampler = DistributedSampler(data.dataset, shuffle=True, seed=0)
    own = DataLoader(data.dataset, batch_size=16, sampler=sampler)
    mine = kdnb.train(kdnb.models.mlp(64, [32], 10), own, epochs=2)
    torch.manual_seed(int(os.environ["RANK"]))  # each rank's own initial weights: the verbs start from rank 0's
    pruned = kdnb.prune(kdnb.models.mlp(64, [32], 10), sparsity=0.7, criterion="taylor", data=data).model
    out = {name: {"status": h.status, "message": h.message, "steps": h.steps, "epochs": h.epochs}
           for name, h in (("nan", nan), ("interrupt", stopped), ("again", again), ("own_sampler", mine))}
    return {**out, "pruned_from_own_init": {"checksum": checksum(pruned)}, "pruned_from_own_data":
            pruned_from_own_data(), "batchnorm": batchnorm(batch_size), "cache_labels": cache_labels(True)}


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    bars = []
    import tqdm.auto

    class CountedBar(tqdm.auto.tqdm):  # a subclass: kdnb's bar asks the class which display it has
        def __init__(self, *args, **kwargs):
            bars.append(kwargs.get("desc"))
            super().__init__(*args, **kwargs)

    tqdm.auto.tqdm = CountedBar
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        results = runs(True, 64)
        uneven = kdnb.train(nets()[0], digits(256, 63), epochs=1)  # 63 = 2 x 32 - 1: each rank takes 32
    results.update(stops(64))
    kdnb.save(nets()[0], os.path.join(out_dir, f"saved-by-rank-{rank}.kdnb"))
    results["uneven"] = {"steps": uneven.steps, "epochs": uneven.epochs, "status": uneven.status}
    results["bars"] = bars
    results["warnings"] = [str(w.message) for w in shown]
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


def spawned(rank: int, out_dir: str) -> None:
    """One of 2 processes of torch.multiprocessing.spawn, in a process group of its own (no torchrun); they meet
    through a file, so no port can be taken in between."""
    torch.set_num_threads(1)
    rendezvous = f"file://{os.path.join(out_dir, 'rendezvous')}"
    torch.distributed.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2)
    torch.manual_seed(rank)  # each process's own initial weights: the call starts from rank 0's
    net = kdnb.models.mlp(64, [32], 10)
    history = kdnb.train(net, digits(256, 64), epochs=1, distributed=True, progress=False)
    result = {"world": kdnb.engine.distributed.world_size(), "status": history.status, "steps": history.steps,
              "epochs": history.epochs, "checksum": checksum(net)}
    torch.save(result, os.path.join(out_dir, f"spawned{rank}.pt"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1] == "--spawn":
        torch.multiprocessing.spawn(spawned, args=(sys.argv[2],), nprocs=2)
    else:
        main(sys.argv[1])
