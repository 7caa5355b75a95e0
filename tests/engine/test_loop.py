"""The one training loop: learning, determinism, events, stop-button safety, non-finite losses."""
import os
import signal

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import kdnb
from kdnb.engine.events import Callback
from kdnb.engine.loop import fit
from kdnb.engine.objective import Supervised


@pytest.fixture(scope="module")
def synthetic():
    return kdnb.datasets.load("synthetic", batch_size=32, seed=0)


def small_net(seed=0):
    torch.manual_seed(seed)
    return kdnb.models.mlp(20, [32], 4)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_loss_decreases_and_history_is_complete(synthetic):
    train, val = synthetic
    history = kdnb.train(small_net(), train, val, epochs=3, progress=False)
    assert history.status == "completed"
    assert history.num_epochs == 3 and history.num_steps == 3 * len(train)
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["val_acc"][-1] > 0.8
    assert set(history.epochs) >= {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "time_s"}


def test_same_seed_same_weights_different_seed_differs(synthetic):
    train, _ = synthetic
    runs = []
    for seed in (3, 3, 4):
        net = small_net()
        kdnb.train(net, train, epochs=1, seed=seed, progress=False)
        runs.append(weights(net))
    assert same_weights(runs[0], runs[1])
    assert not same_weights(runs[0], runs[2])


def test_extra_loss_terms_are_logged_per_step_and_epoch(synthetic):
    train, _ = synthetic

    def loss(logits, y):
        ce = torch.nn.functional.cross_entropy(logits, y)
        l2 = 1e-3 * logits.pow(2).mean()
        return ce + l2, {"ce": ce, "l2": l2}

    history = kdnb.train(small_net(), train, epochs=2, loss=loss, progress=False)
    assert len(history.steps["ce"]) == history.num_steps
    assert len(history.epochs["train_ce"]) == 2
    assert history.steps["loss"][0] == pytest.approx(history.steps["ce"][0] + history.steps["l2"][0], rel=1e-5)


def test_events_arrive_in_order(synthetic):
    train, val = synthetic
    seen = []

    class Recorder(Callback):
        def on_run_start(self, state): seen.append("start")
        def on_step_end(self, state): seen.append("step")
        def on_epoch_end(self, state): seen.append("epoch")
        def on_run_end(self, state): seen.append("end")

    kdnb.train(small_net(), train, val, epochs=2, callbacks=[Recorder()], progress=False)
    steps = len(train)
    assert seen == ["start"] + (["step"] * steps + ["epoch"]) * 2 + ["end"]


class InterruptAt(Callback):
    """Simulate the notebook's stop button (SIGINT) at a given step."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            state.stop = True


@pytest.mark.parametrize("stop_step", [1, 17, 50])
def test_stop_button_returns_partial_history_and_consistent_weights(synthetic, stop_step):
    train, _ = synthetic
    interrupted, reference = small_net(), small_net()
    history = fit(interrupted, train, epochs=3, callbacks=[InterruptAt(stop_step)], device="cpu")
    fit(reference, train, epochs=3, callbacks=[StopAt(stop_step)], device="cpu")
    assert history.status == "interrupted" and history.interrupted
    assert history.num_steps == stop_step
    assert f"after step {stop_step}" in history.message
    assert same_weights(weights(interrupted), weights(reference))


def test_keyboard_interrupt_from_the_data_keeps_completed_steps(synthetic):
    train, _ = synthetic
    batches = list(train)

    class Breaks:
        def __iter__(self):
            for i, batch in enumerate(batches):
                if i == 7:
                    raise KeyboardInterrupt
                yield batch

        def __len__(self):
            return len(batches)

    interrupted, reference = small_net(), small_net()
    history = fit(interrupted, Breaks(), epochs=1, device="cpu")
    fit(reference, batches, epochs=1, callbacks=[StopAt(7)], device="cpu")
    assert history.status == "interrupted" and history.num_steps == 7
    assert same_weights(weights(interrupted), weights(reference))


def test_non_finite_loss_stops_and_names_the_step(synthetic):
    train, _ = synthetic
    calls = {"n": 0}

    def loss(logits, y):
        calls["n"] += 1
        ce = torch.nn.functional.cross_entropy(logits, y)
        return ce * float("nan") if calls["n"] == 5 else ce

    diverged, reference = small_net(), small_net()
    with pytest.warns(RuntimeWarning, match="at step 5"):
        history = kdnb.train(diverged, train, epochs=2, loss=loss, progress=False)
    fit(reference, train, epochs=2, callbacks=[StopAt(4)], device="cpu")
    assert history.status == "diverged" and history.num_steps == 4
    assert same_weights(weights(diverged), weights(reference))


def test_optimizer_factory_and_instance(synthetic):
    train, _ = synthetic
    net = small_net()
    history = kdnb.train(net, train, epochs=1, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), progress=False)
    assert history.status == "completed"
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    assert kdnb.train(net, train, epochs=1, optimizer=opt, progress=False).status == "completed"


def test_mode_is_restored(synthetic):
    train, _ = synthetic
    net = small_net().eval()
    kdnb.train(net, train, epochs=1, progress=False)
    assert not net.training


@pytest.mark.cuda
def test_cuda_with_mixed_precision(synthetic):
    train, val = synthetic
    net = small_net()
    history = kdnb.train(net, train, val, epochs=2, device="cuda", amp=True, progress=False)
    assert history.status == "completed" and history["val_acc"][-1] > 0.8
    assert next(net.parameters()).device.type == "cuda"


# ---- the stop button at every phase of a run: it returns what it has, with a status ----

class Once:
    """Raises KeyboardInterrupt on its ``at``-th call (1-based), otherwise does ``then``."""

    def __init__(self, at=1, then=lambda *a, **k: None):
        self.at, self.then, self.calls = at, then, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.then(*args, **kwargs)


class InterruptingNet(torch.nn.Module):
    def __init__(self, at):
        super().__init__()
        self.net, self.hit = small_net(), Once(at)

    def forward(self, x):
        self.hit()
        return self.net(x)


class EventInterrupt(Callback):
    def __init__(self, event, at=1):
        self.event, self.hit = event, Once(at)

    def on_run_start(self, state):
        if self.event == "on_run_start":
            self.hit()

    def on_step_end(self, state):
        if self.event == "on_step_end":
            self.hit()

    def on_epoch_end(self, state):
        if self.event == "on_epoch_end":
            self.hit()

    def on_run_end(self, state):
        if self.event == "on_run_end":
            self.hit()


class SlowItems(torch.utils.data.Dataset):
    """A map-style dataset whose ``at``-th item access is the stop button."""

    def __init__(self, dataset, at):
        self.dataset, self.hit = dataset, Once(at)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        self.hit()
        return self.dataset[i]


def _phases(train, val):
    """(what is interrupted, fit's arguments, steps done by then)."""
    data = train.dataset
    return [
        ("first batch drawn by the checks", dict(data=DataLoader(SlowItems(data, 1), batch_size=32)), 0),
        ("forward run by the checks", dict(model=InterruptingNet(1)), 0),
        ("optimizer factory", dict(optimizer=Once(1)), 0),
        ("scheduler factory", dict(scheduler=Once(1)), 0),
        ("on_run_start", dict(callbacks=[EventInterrupt("on_run_start")]), 0),
        ("data loading mid-epoch", dict(data=DataLoader(SlowItems(data, 32 * 4 + 1), batch_size=32)), 3),
        ("forward mid-epoch", dict(model=InterruptingNet(6)), 3),  # calls 1 and 2 are the checks' (data, val)
        ("loss", dict(objective=Once(4, Supervised())), 3),
        ("on_step_end", dict(callbacks=[EventInterrupt("on_step_end", at=6)]), 6),
        ("validation", dict(val=DataLoader(SlowItems(val.dataset, 257), batch_size=256)), len(train)),
        ("on_epoch_end", dict(callbacks=[EventInterrupt("on_epoch_end")]), len(train)),
        ("scheduler step", dict(scheduler=lambda opt: type("S", (), {"step": Once(1)})()), len(train)),
        ("on_run_end", dict(callbacks=[EventInterrupt("on_run_end")]), 2 * len(train)),
    ]


@pytest.mark.parametrize("index", range(13))
def test_an_interrupt_at_any_phase_returns_the_history_with_a_status(synthetic, index):
    train, val = synthetic
    phase, kwargs, steps = _phases(train, val)[index]
    model = kwargs.pop("model", small_net())
    data = kwargs.pop("data", train)
    start = weights(model)
    model.train()
    history = fit(model, data, val if "val" not in kwargs else kwargs.pop("val"), epochs=2, device="cpu", **kwargs)
    assert history.status == "interrupted", phase
    assert history.num_steps == steps, phase
    assert f"after step {steps}" in history.message or (steps == 0 and "unchanged" in history.message), phase
    assert model.training, phase
    if steps == 0:
        assert same_weights(weights(model), start), phase
    assert all(torch.isfinite(p).all() for p in model.parameters()), phase
