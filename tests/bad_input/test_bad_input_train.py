"""kdnb.train with bad input (issue 14): each case is one clean KdnbError naming the argument and the fix,
and the user's model and loader are bit-identical afterwards (tests/badinput.py says what that means)."""
from __future__ import annotations

import math

import pytest
import torch
from badinput import (
    DictOut, Raises, assert_clean_error, assert_unchanged, labels, make_loader, make_net, on_meta, snapshot
)
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import kdnb
from kdnb.engine.events import Callback
from kdnb.errors import KdnbError


class Items(Dataset):
    """A map-style dataset (no .tensors, so only the loop sees its labels): ``bad`` maps index -> (x, y)."""

    def __init__(self, n: int = 32, bad: dict | None = None, features: int = 6):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, features, generator=g), torch.randint(0, 3, (n,), generator=g)
        self.bad = bad or {}

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        if i in self.bad:
            return self.bad[i]() if callable(self.bad[i]) else self.bad[i]
        return self.x[i], self.y[i]


def fails(model, data, names, match=None, **kwargs):
    """train(model, data, **kwargs) is a clean error naming ``names``; model, data and val as they were."""
    val = kwargs.get("val")
    before, val_before = snapshot(model, data), snapshot(nn.Identity(), val)
    options = {"epochs": 1, "progress": False, "plot": False, **kwargs}
    error = assert_clean_error(kdnb.train, model, data, match=match, names=names, **options)
    assert_unchanged(before, model, data)
    assert_unchanged(val_before, nn.Identity(), val)
    return error


class Hooked(Callback):
    def on_step_end(self, state):
        pass


# ---- every setting ----

SETTINGS = [
    ("lr", float("nan")), ("lr", float("inf")), ("lr", -0.1), ("lr", 0), ("lr", "0.1"), ("lr", True), ("lr", None),
    ("seed", "abc"), ("seed", 1.5), ("seed", True), ("seed", 2**70), ("seed", [0]),
    ("scheduler", "linear"), ("scheduler", 5),
    ("callbacks", 5), ("callbacks", [1]), ("callbacks", "abc"), ("callbacks", {"a": Hooked()}),
    ("callbacks", [Hooked]), ("callbacks", [object()]),
    ("grad_clip", -1), ("grad_clip", 0), ("grad_clip", "1"), ("grad_clip", float("nan")), ("grad_clip", True),
    ("amp", "yes"), ("amp", 1), ("amp", None),
    ("optimizer", "adam"), ("optimizer", 5),
    ("device", "gpu0"), ("device", None), ("device", 3.5), ("device", "tpu"),
    ("epochs", 0), ("epochs", -1), ("epochs", 1.5), ("epochs", True), ("epochs", "5"), ("epochs", None),
    ("progress", "no"), ("plot", "yes"), ("plot", 1),
]


@pytest.mark.parametrize("name, value", SETTINGS, ids=[f"{n}={v!r}"[:30] for n, v in SETTINGS])
def test_each_setting_is_checked_at_the_entry(name, value):
    fails(make_net(), make_loader(), names=name if name != "device" else "device", **{name: value})


@pytest.mark.parametrize("loss", ["mse", 5, nn.CrossEntropyLoss, [nn.CrossEntropyLoss()]])
def test_loss_must_be_a_function(loss):
    fails(make_net(), make_loader(), names="loss", loss=loss)


@pytest.mark.parametrize("factory, names", [
    (lambda p: 5, "optimizer"),
    (lambda p: 1 / 0, "optimizer"),
    (lambda: None, "optimizer"),
])
def test_optimizer_factories_that_fail(factory, names):
    fails(make_net(), make_loader(), names=names, optimizer=factory)


@pytest.mark.parametrize("factory", [lambda opt: 5, lambda opt: 1 / 0, lambda: None])
def test_scheduler_factories_that_fail(factory):
    fails(make_net(), make_loader(), names="scheduler", scheduler=factory)


@pytest.mark.parametrize("loss", [
    lambda logits, y: nn.functional.cross_entropy(logits, y, reduction="none"),  # not a scalar
    lambda logits, y: 1.0,  # not a tensor
    lambda logits, y: nn.functional.mse_loss(logits, y),  # torch refuses int targets
    lambda logits: logits.sum(),  # wrong signature
])
def test_losses_that_fail_on_the_first_step(loss):
    fails(make_net(), make_loader(), names="batch 1", match="loss|step failed", loss=loss)


# ---- the model ----

class TupleOut(DictOut):
    def forward(self, x):
        return self.fc(x), x


class Wrong(DictOut):
    def __init__(self, make):
        super().__init__()
        self.make = make

    def forward(self, x):
        return self.make(self.fc(x))


def frozen():
    net = make_net()
    net.requires_grad_(False)
    return net


MODELS = [
    ("resnet", "model"), (None, "model"), (frozen, "requires_grad"), (lambda: nn.Sequential(nn.Flatten()), "model"),
    (on_meta, "meta"), (DictOut, "dict"), (TupleOut, "tuple"), (lambda: Raises(IndexError), "IndexError"),
    (lambda: Raises(KeyError), "KeyError"), (lambda: Raises(AttributeError), "AttributeError"),
    (lambda: Wrong(lambda out: out[:, :, None]), "logits"), (lambda: Wrong(lambda out: out.argmax(1, keepdim=True)), "logits"),
    (lambda: Wrong(lambda out: out[:2]), "rows"), (lambda: kdnb.models.mlp(7, [8], 3), "input size"),
    (lambda: kdnb.models.mlp(6, [8], 2), "labels out of range"),
]


@pytest.mark.parametrize("build, names", MODELS, ids=[n for _, n in MODELS])
def test_models_that_cannot_train_on_the_data(build, names):
    model = build() if callable(build) else build
    if not isinstance(model, nn.Module):
        with pytest.raises(KdnbError, match="torch.nn.Module"):
            kdnb.train(model, make_loader(), progress=False)
        return
    fails(model, make_loader(), names=names)


# ---- data and val ----

def unbatched():
    return DataLoader(TensorDataset(torch.randn(8, 6), torch.randint(0, 3, (8,))), batch_size=None)


def dict_batches(keys=("input", "label")):
    class D(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {keys[0]: torch.randn(6), keys[1]: torch.tensor(i % 3)}

    return DataLoader(D(), batch_size=4)


def collate(fn):
    return DataLoader(TensorDataset(torch.randn(8, 6), torch.randint(0, 3, (8,))), batch_size=4, collate_fn=fn)


DATA = [
    (lambda: torch.randn(8, 6), "DataLoader"), (lambda: iter([1, 2]), "DataLoader"), (lambda: 42, "DataLoader"),
    (lambda: "abc", "DataLoader"), (lambda: {"x": torch.randn(4, 6)}, "DataLoader"),
    (lambda: labels(torch.zeros(0, dtype=torch.long), n=0), "empty"), (lambda: [], "empty"),
    (unbatched, "batch_size"), (dict_batches, "'x'"), (lambda: DataLoader([1, 2, 3]), "shape"),
    (lambda: labels(torch.rand(8)), "float32"), (lambda: labels(torch.zeros(8, 3, dtype=torch.long)), "shape"),
    (lambda: labels(torch.tensor([0, 1, 2, 9, 0, 1, 2, 0])), "labels out of range"),
    (lambda: labels(torch.tensor([0, 1, -1, 0, 0, 1, 2, 0])), "labels out of range"),
    (lambda: labels(torch.ones(8, dtype=torch.bool)), "bool"),
    (lambda: collate(lambda items: (torch.stack([x for x, _ in items]), torch.tensor([0]))), "1 labels for 4"),
    (lambda: collate(lambda items: ([x.tolist() for x, _ in items], torch.tensor([0] * 4))), "inputs"),
    (lambda: collate(lambda items: (torch.stack([x for x, _ in items]), [0, 1, 2, 0])), "labels"),
    (lambda: collate(lambda items: "a batch"), "a batch should be"),
    (lambda: DataLoader(Items(bad={0: lambda: 1 / 0}), batch_size=4), "ZeroDivisionError"),
]


@pytest.mark.parametrize("build, names", DATA, ids=[f"data-{i}-{n}" for i, (_, n) in enumerate(DATA)])
def test_bad_data(build, names):
    fails(make_net(), build(), names=names)


VAL = [
    (lambda: [1, 2, 3], "val"), (lambda: torch.randn(8, 6), "val"), (lambda: make_loader(features=5), "input size"),
    (lambda: make_loader(labels=torch.full((32,), 5)), "labels out of range"),
    (lambda: DataLoader(TensorDataset(torch.randn(8, 6)), batch_size=4), "no labels"),
    (lambda: labels(torch.zeros(0, dtype=torch.long), n=0), "val is empty"), (lambda: dict_batches(), "val"),
    (unbatched, "batch_size"), (lambda: DataLoader(Items(bad={30: (torch.randn(6), torch.tensor(7))}), batch_size=8),
                                "batch 4"),
    (lambda: DataLoader(Items(bad={9: (torch.randn(5), torch.tensor(1))}), batch_size=1), "batch 10"),
]


@pytest.mark.parametrize("build, names", VAL, ids=[f"val-{i}-{n}" for i, (_, n) in enumerate(VAL)])
def test_bad_val_is_caught_before_training_or_rolled_back(build, names):
    """val is checked at the entry (first batch against the model); a bad later batch fails at the epoch's
    end, and then the model is put back as it was given."""
    fails(make_net(), make_loader(), names=names, val=build())


# ---- inside the loop: each batch's labels, a later batch that does not fit ----

LATER = [
    ({17: (torch.randn(6), torch.tensor(12))}, "batch 5 of epoch 1", "labels out of range"),
    ({17: (torch.randn(6), torch.tensor(-3))}, "batch 5 of epoch 1", "labels out of range"),
    ({9: (torch.randn(6), torch.tensor(1.0))}, "batch 3 of epoch 1", "float32"),
    ({9: (torch.randn(9), torch.tensor(1))}, "batch 3", None),
    ({30: (torch.randn(6), torch.tensor(3))}, "batch 8 of epoch 1", "labels out of range"),
]


@pytest.mark.parametrize("bad, where, match", LATER, ids=[w + (m or "") for _, w, m in LATER])
def test_a_bad_later_batch_names_it_and_the_model_is_restored(bad, where, match):
    net, data = make_net(), DataLoader(Items(bad=bad), batch_size=4)
    fails(net, data, names=where, match=match, epochs=2)


def test_a_bad_batch_in_the_second_epoch_restores_the_first_epoch_too():
    net = make_net()
    data = DataLoader(Items(n=8, bad={}), batch_size=4)
    calls = {"n": 0}

    def item(i, real=data.dataset.__class__.__getitem__, ds=data.dataset):
        calls["n"] += 1
        return (torch.randn(6), torch.tensor(4)) if calls["n"] > 12 else real(ds, i)

    data.dataset.__class__ = type("Late", (Items,), {"__getitem__": lambda self, i: item(i)})
    before = snapshot(net, data)
    assert_clean_error(kdnb.train, net, data, names="epoch 2", match="out of range", epochs=3, progress=False)
    assert_unchanged(before, net, data)


# ---- in-place atomicity: whatever fails, the model comes back as it was given ----

class Boom:  # not a Callback subclass: its one event comes from __getattr__
    def __init__(self, at: int, error: type[BaseException] = ValueError, event: str = "on_step_end"):
        self.at, self.error, self.event = at, error, event

    def __getattr__(self, name):
        if name == self.event:
            return self._hit
        raise AttributeError(name)

    def _hit(self, state):
        if state.step >= self.at or self.event in ("on_run_start", "on_epoch_end"):
            raise self.error("a bug in the user's callback")


@pytest.mark.parametrize("event", ["on_run_start", "on_step_end", "on_epoch_end"])
def test_an_error_from_a_callback_propagates_with_the_model_restored(event):
    net, data = make_net(), make_loader()
    before = snapshot(net, data)
    with pytest.raises(ValueError, match="a bug in the user's callback"):
        kdnb.train(net, data, epochs=2, callbacks=[Boom(3, event=event)], progress=False)
    assert_unchanged(before, net, data)


def test_a_failed_run_restores_an_optimizer_instance_the_modes_and_the_gradients():
    net, data = make_net(), make_loader()
    net[1].eval()  # a submodule in its own mode
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    kdnb.train(net, data, epochs=1, optimizer=opt, progress=False)  # the optimizer now has state
    net.train()
    net[1].eval()
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in opt.state_dict()["state"][0].items()}
    before = snapshot(net, data)
    with pytest.raises(ValueError):
        kdnb.train(net, data, epochs=2, optimizer=opt, callbacks=[Boom(2)], progress=False)
    assert_unchanged(before, net, data)
    assert all(torch.equal(v, opt.state_dict()["state"][0][k]) for k, v in state.items() if isinstance(v, torch.Tensor))


def test_a_successful_run_keeps_each_submodules_own_mode():
    net, data = make_net(), make_loader()
    net[1].eval()
    kdnb.train(net, data, epochs=1, progress=False)
    assert net.training and not net[1].training


# ---- divergence: flagged, with the step and the advice, sound weights kept ----

@pytest.mark.parametrize("lr, optimizer", [(1e6, None), (1e8, "sgd")])
def test_a_run_that_blows_up_is_flagged_diverged(lr, optimizer):
    net, data = make_net(), make_loader()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    opt = (lambda p: torch.optim.SGD(p, lr=lr)) if optimizer else None
    with pytest.warns(RuntimeWarning, match=r"at step \d+ \(epoch 1\).*lower lr"):
        history = kdnb.train(net, data, epochs=3, lr=lr, optimizer=opt, progress=False)
    assert history.status == "diverged" and "step" in history.message and "lower lr" in history.message
    assert all(math.isfinite(v) and v < 1e3 for v in history.steps["loss"])
    assert all(torch.equal(start[k], v) for k, v in net.state_dict().items())  # back to the epoch's start


def test_exploding_weights_are_flagged_even_when_the_loss_stays_small():
    net, data = make_net(), make_loader()

    def loss(logits, y):  # a loss that rewards growing weights but stays bounded
        return torch.tanh(-sum(p.sum() for p in net.parameters()) * 1e-3) + 1.0

    with pytest.warns(RuntimeWarning, match="weights' norm"):
        history = kdnb.train(net, data, epochs=2, loss=loss, optimizer=lambda p: torch.optim.SGD(p, lr=1e6),
                             progress=False)
    assert history.status == "diverged"
    assert all(torch.isfinite(p).all() and p.abs().max() < 1e3 for p in net.parameters())


def test_a_healthy_run_is_not_flagged():
    history = kdnb.train(make_net(), make_loader(), epochs=3, lr=0.05, progress=False)
    assert history.status == "completed"


@pytest.mark.parametrize("own_generator", [True, False])
@pytest.mark.parametrize("seed", [None, 3])
def test_a_failed_run_leaves_the_loaders_shuffling_as_if_it_never_ran(own_generator, seed):
    """Shuffled batches: the bad label lands in some batch of the first epoch; afterwards the loader's own
    generator (or torch's global one, which a loader without one draws from) is where it was."""
    generator = torch.Generator().manual_seed(5) if own_generator else None
    data = DataLoader(Items(bad={21: (torch.randn(6), torch.tensor(9))}), batch_size=4, shuffle=True,
                      generator=generator)
    net = make_net()
    before = snapshot(net, data)
    assert_clean_error(kdnb.train, net, data, names="labels out of range", match=r"batch \d+ of epoch 1",
                       epochs=2, seed=seed, progress=False)
    assert_unchanged(before, net, data)
    if own_generator:
        assert torch.equal(generator.get_state(), before.loader["generator"])


def test_the_first_batch_the_checks_draw_moves_no_random_generator():
    from kdnb.engine.checks import first_batch

    own = make_loader()
    on_global = DataLoader(TensorDataset(torch.randn(16, 6), torch.zeros(16).long()), batch_size=4, shuffle=True)
    for data in (own, on_global):
        state, generator = torch.get_rng_state(), (data.generator.get_state() if data.generator else None)
        expected = [x for x, _ in data]  # the epoch a user would get next ...
        torch.set_rng_state(state)
        if generator is not None:
            data.generator.set_state(generator)
        first_batch(data)
        assert [torch.equal(a, b) for a, b in zip(expected, (x for x, _ in data))] == [True] * len(expected)
