"""One rank of tests/test_distributed.py, started by ``torchrun --nproc_per_node=2`` (it is not a test itself).

Runs the verbs as a user's script would (kdnb starts the gloo process group from torchrun's environment)
and saves, per rank, what the test compares: parameter checksums, histories, bars drawn, warnings shown.
"""
import os
import signal
import sys
import warnings

import torch
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
    return {**out, "pruned_from_own_init": {"checksum": checksum(pruned)}}


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


if __name__ == "__main__":
    main(sys.argv[1])
