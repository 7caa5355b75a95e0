"""kdnb.distill with bad input (issue 14): each case is one clean KdnbError naming the argument and the fix; the
teacher, the student, the data, val and transfer loaders are bit-identical afterwards (tests/badinput.py)."""
from __future__ import annotations

import pytest
import torch
from badinput import (
    DictOut, Items, Raises, assert_clean_error, assert_unchanged, dict_batches, empty, interrupted_on_call, labels,
    make_loader, on_meta, snapshot, unlabelled
)
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import kdnb
from kdnb.engine.distill import FrozenTeacher, kd_objective
from kdnb.engine.events import Callback


def net(features: int = 6, hidden: int = 8, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return kdnb.models.mlp(features, [hidden], classes)


def teacher() -> nn.Module:
    return net(hidden=16).eval()


def frozen():
    model = net()
    model.requires_grad_(False)
    return model


class Hooked(Callback):
    def on_step_end(self, state):
        pass


DEFAULT = object()


def distilled_fails(names, match=None, teacher_model=DEFAULT, student=DEFAULT, data=DEFAULT, **kwargs):
    """distill(teacher, student, data, **kwargs) is a clean error naming ``names``; every object given is as it was."""
    teacher_model = teacher() if teacher_model is DEFAULT else teacher_model
    student = net() if student is DEFAULT else student
    data = make_loader() if data is DEFAULT else data
    models = [m if isinstance(m, nn.Module) else nn.Identity() for m in (teacher_model, student)]
    loaders = [data, kwargs.get("val"), kwargs.get("transfer")]
    befores = [snapshot(models[0], data), snapshot(models[1])] + [snapshot(nn.Identity(), d) for d in loaders[1:]]
    options = {"epochs": 1, "progress": False, "plot": False, **kwargs}
    error = assert_clean_error(kdnb.distill, teacher_model, student, data, names=names, match=match, **options)
    assert_unchanged(befores[0], models[0], data)
    assert_unchanged(befores[1], models[1])
    for before, loader in zip(befores[2:], loaders[1:]):
        assert_unchanged(before, nn.Identity(), loader if isinstance(loader, DataLoader) else None)
    return error


def shift(x):
    return x.roll(1, dims=-1)


ARGUMENTS = [
    # method and its weights
    ({"method": "kdd"}, "did you mean 'kd'"), ({"method": "hinton"}, "method"), ({"method": 5}, "method"),
    ({"method": None}, "method"), ({"method": ["kd"]}, "method"),
    ({"temperature": 0}, "temperature"), ({"temperature": -2.0}, "temperature"), ({"temperature": "4"}, "temperature"),
    ({"temperature": float("nan")}, "temperature"), ({"temperature": float("inf")}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"alpha": 1.5}, "alpha"), ({"alpha": -0.1}, "alpha"), ({"alpha": "0.5"}, "alpha"),
    ({"alpha": float("nan")}, "alpha"),
    ({"method": "dkd", "alpha": -1.0}, "alpha"), ({"method": "dkd", "beta": -1.0}, "beta"),
    ({"method": "dkd", "beta": float("inf")}, "beta"), ({"beta": "1"}, "beta"), ({"beta": float("nan")}, "beta"),
    # the budget
    ({"epochs": 0}, "epochs"), ({"epochs": -1}, "epochs"), ({"epochs": 1.5}, "epochs"), ({"epochs": "5"}, "epochs"),
    ({"epochs": True}, "epochs"), ({"epochs": None}, "epochs"),
    ({"method": "dkd", "warmup": 0}, "warmup"), ({"method": "dkd", "warmup": -1}, "warmup"),
    ({"method": "dkd", "warmup": 1.5}, "warmup"), ({"method": "dkd", "warmup": "2"}, "warmup"),
    # baselines, cache, seeds
    ({"baseline": "yes"}, "baseline"), ({"baseline": 5}, "baseline"), ({"baseline": []}, "baseline"),
    ({"baseline": ("scratch", "x")}, "baseline"), ({"baseline": "both"}, "baseline"),
    ({"cache": "yes"}, "cache"), ({"cache": 1}, "cache"), ({"cache": None}, "cache"),
    ({"cache": True, "augment": shift}, "cache"), ({"cache": "fp16", "mixup": 0.4}, "cache"),
    ({"seeds": []}, "seeds"), ({"seeds": ["a"]}, "seeds"), ({"seeds": [1.5]}, "seeds"), ({"seeds": 5}, "seeds"),
    ({"seeds": "012"}, "seeds"), ({"seeds": [True]}, "seeds"), ({"seeds": [0, 0]}, "seeds"),
    ({"seeds": [2**70]}, "seeds"),
    # features
    ({"features": [("1", "1")]}, "features"), ({"method": "fitnets", "features": ["1"]}, "features"),
    ({"method": "fitnets", "features": "1"}, "features"), ({"method": "fitnets", "features": [("1",)]}, "features"),
    ({"method": "fitnets", "features": [("9", "1")]}, "teacher has no module named '9'"),
    ({"method": "fitnets", "features": [("1", "22")]}, "did you mean '2'"),
    ({"method": "at"}, "features"), ({"method": "at", "features": [("1", "1")]}, "feature maps"),
    ({"method": "fitnets", "features": [(1, 1)]}, "features"),
    # augmentation and mixup
    ({"augment": "digit"}, "did you mean 'digits'"), ({"augment": 5}, "augment"), ({"augment": ["digits"]}, "augment"),
    ({"augment": lambda x: x[:, :3]}, "augment"), ({"augment": lambda x: x * float("nan")}, "augment"),
    ({"augment": lambda x: 1 / 0}, "augment"), ({"augment": lambda x: x.tolist()}, "augment"),
    ({"augment": lambda x, y: x}, "augment"), ({"augment": lambda x: x.long()}, "augment"),
    ({"mixup": -1}, "mixup"), ({"mixup": "0.4"}, "mixup"), ({"mixup": float("nan")}, "mixup"),
    ({"mixup": float("inf")}, "mixup"), ({"method": "dkd", "mixup": 0.4}, "mixup"), ({"mixup": True}, "mixup"),
    # transfer sets
    ({"transfer": [1, 2]}, "transfer"), ({"transfer": "abc"}, "transfer"), ({"transfer": 5}, "transfer"),
    ({"transfer": torch.randn(8, 7)}, "transfer"), ({"transfer": torch.randn(8)}, "transfer"),
    ({"transfer": unlabelled(features=7)}, "transfer"), ({"transfer": torch.zeros(0, 6)}, "transfer"),
    ({"transfer": torch.randint(0, 3, (8, 6))}, "transfer"),
    ({"transfer": torch.full((8, 6), float("nan"))}, "transfer"),
    ({"transfer": iter([torch.randn(4, 6)])}, "transfer"),
    # val
    ({"val": [1, 2, 3]}, "val"), ({"val": torch.randn(8, 6)}, "val"), ({"val": make_loader(features=5)}, "input size"),
    ({"val": make_loader(labels=torch.full((32,), 5))}, "out of range"),
    ({"val": empty()}, "val is empty"), ({"val": dict_batches()}, "val"),
    ({"val": DataLoader(Items({30: (torch.randn(6), torch.tensor(7))}), batch_size=8)}, "batch 4"),
    # the training settings
    ({"optimizer": "adam"}, "optimizer"), ({"optimizer": 5}, "optimizer"), ({"optimizer": lambda p: 5}, "optimizer"),
    ({"optimizer": torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)}, "factory"),
    ({"lr": float("nan")}, "lr"), ({"lr": -1}, "lr"), ({"lr": "0.1"}, "lr"),
    ({"scheduler": "linear"}, "scheduler"), ({"scheduler": 5}, "scheduler"),
    ({"scheduler": lambda opt: 1 / 0}, "scheduler"),
    ({"amp": "yes"}, "amp"), ({"grad_clip": -1}, "grad_clip"), ({"grad_clip": "1"}, "grad_clip"),
    ({"device": "gpu0"}, "device"), ({"device": 3.5}, "device"), ({"device": None}, "device"),
    ({"seed": "abc"}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": 2**70}, "seed"),
    ({"callbacks": 5}, "callbacks"), ({"callbacks": [1]}, "callbacks"), ({"callbacks": "abc"}, "callbacks"),
    ({"callbacks": [Hooked]}, "callbacks"), ({"progress": "no"}, "progress"), ({"plot": "yes"}, "plot"),
]


def _case_id(index: int, kwargs: dict) -> str:
    return f"{index}-" + ",".join(f"{k}={v!r}"[:24] for k, v in kwargs.items())


@pytest.mark.parametrize("kwargs, names", ARGUMENTS, ids=[_case_id(i, k) for i, (k, _) in enumerate(ARGUMENTS)])
def test_each_argument_of_distill_is_checked_at_the_entry(kwargs, names):
    distilled_fails(names=names, **kwargs)


MODELS = [
    # (teacher, student, names)
    (lambda: "big", net, "teacher"), (lambda: None, net, "teacher"), (teacher, lambda: "small", "student"),
    (on_meta, net, "meta"), (teacher, on_meta, "meta"), (DictOut, net, "dict"), (teacher, DictOut, "dict"),
    (lambda: Raises(IndexError), net, "IndexError"), (teacher, lambda: Raises(KeyError), "KeyError"),
    (teacher, frozen, "requires_grad"), (lambda: net(features=7), net, "input size"),
    (teacher, lambda: net(features=7), "input size"),
    (teacher, lambda: net(classes=4), "give the student's last layer"),
    (lambda: net(classes=2), lambda: net(classes=2), "out of range"),
    (lambda: nn.Sequential(nn.Flatten()), net, "teacher"), (teacher, lambda: nn.Sequential(nn.Flatten()), "student"),
]


@pytest.mark.parametrize("build_teacher, build_student, names", MODELS, ids=[f"{i}-{n}" for i, (_, _, n)
                                                                            in enumerate(MODELS)])
def test_models_distill_cannot_work_with(build_teacher, build_student, names):
    distilled_fails(names=names, teacher_model=build_teacher(), student=build_student())


def test_the_student_is_the_teacher():
    model = teacher()
    distilled_fails(names="student is the teacher", teacher_model=model, student=model)


DATA = [
    (lambda: [1, 2, 3], "data"), (lambda: torch.randn(8, 6), "DataLoader"), (lambda: 42, "DataLoader"),
    (lambda: "abc", "DataLoader"), (empty, "empty"), (dict_batches, "'x'"),
    (lambda: DataLoader(TensorDataset(torch.randn(8, 6), torch.randint(0, 3, (8,))), batch_size=None), "batch_size"),
    (lambda: labels(torch.rand(8)), "float32"), (lambda: labels(torch.tensor([0, 1, 2, 9] * 2)), "out of range"),
    (lambda: labels(torch.tensor([0, 1, -2, 0] * 2)), "out of range"), (unlabelled, "transfer="),
    (lambda: DataLoader(Items({20: (torch.randn(6), torch.tensor(5))}), batch_size=8), "step 3"),
    (lambda: DataLoader(Items({20: (torch.randn(7), torch.tensor(1))}), batch_size=8), "batch 3"),
    (lambda: DataLoader(Items({9: (torch.randn(6), torch.tensor(1.0))}), batch_size=4), "step 3"),
]


@pytest.mark.parametrize("build, names", DATA, ids=[f"data-{i}-{n}" for i, (_, n) in enumerate(DATA)])
def test_bad_data(build, names):
    distilled_fails(names=names, data=build())


@pytest.mark.parametrize("options", [{}, {"baseline": True}, {"cache": False}, {"transfer": torch.randn(8, 6)}])
def test_a_bad_later_batch_with_each_loader_kind(options):
    """The soft-label cache, the live teacher and the transfer-set loader all meet the bad batch."""
    data = DataLoader(Items({20: (torch.randn(6), torch.tensor(5))}), batch_size=8)
    distilled_fails(names="out of range", data=data, **options)


# ---- what the old tests/test_distill_bad_input.py checked beyond the harness ----

def test_unknown_feature_layer_lists_the_modules_with_their_shapes():
    error = distilled_fails(names="student", method="fitnets", features=[("2", "22")])
    assert "student modules with output shapes: 0 (6,), 1 (8,), 2 (8,), 3 (3,)" in str(error)


def test_fitnets_cannot_adapt_different_resolutions():
    data = DataLoader(TensorDataset(torch.randn(8, 1, 12), torch.randint(0, 2, (8,))), batch_size=4)
    big = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(48, 2)).eval()
    small = nn.Sequential(nn.Conv1d(1, 2, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(12, 2))
    distilled_fails(names="spatial sizes differ", match=r"cannot adapt student '0' \(2, 6\) to teacher '0' \(4, 12\)",
                    teacher_model=big, student=small, data=data, method="fitnets", features=[("0", "0")])


def test_teacher_in_training_mode_is_used_in_eval_mode_with_a_warning():
    torch.manual_seed(0)
    live = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 3))
    with pytest.warns(UserWarning, match=r"the teacher is in training mode; .* call teacher.eval\(\) to silence"):
        result = kdnb.distill(live, net(), make_loader(), epochs=1, progress=False)
    assert result.history.status == "completed"
    assert live.training and all(p.requires_grad for p in live.parameters())
    with pytest.warns(UserWarning, match="training mode"):
        frozen_teacher = FrozenTeacher(live)
    x = next(iter(make_loader()))[0]
    assert not frozen_teacher.model.training and torch.equal(frozen_teacher(x), frozen_teacher(x))


@pytest.mark.parametrize("kwargs, names", [({"alpha": 2.0}, "alpha"), ({"temperature": 0}, "temperature"),
                                           ({"temperature": "4"}, "temperature")])
def test_kd_objective_checks_its_weights(kwargs, names):
    model = teacher()
    before = snapshot(model)
    assert_clean_error(kd_objective, model, names=names, **kwargs)
    assert_unchanged(before, model)


# ---- the stop button at every phase: what it has, with a summary that does not lie, or one clean line ----

from kdnb.engine.distill import cache as cache_module  # noqa: E402
from kdnb.engine.distill import hooks as hooks_module  # noqa: E402
from kdnb.engine.distill import run as run_module  # noqa: E402


def stop(*args, **kwargs):
    raise KeyboardInterrupt


class StopIn(Callback):
    """The stop button at step ``at`` of the run titled ``title`` (the ``nth`` such run)."""

    def __init__(self, title, at=2, nth=1):
        self.title, self.at, self.nth, self.seen = title, at, nth, 0

    def on_run_start(self, state):
        self.seen += state.title == self.title

    def on_step_end(self, state):
        if state.title == self.title and self.seen == self.nth and state.step == self.at:
            raise KeyboardInterrupt


class SlowItems(Dataset):
    """The stop button at the ``at``-th item access."""

    def __init__(self, at):
        self.inner, self.calls, self.at = make_loader().dataset, 0, at

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.inner[i]


BEFORE_TRAINING = [
    ("first-batch checks", {"data": DataLoader(SlowItems(1), batch_size=8)}, None),
    ("soft-label cache", {"cache": True}, (cache_module, "teacher_logits", stop)),
    ("feature-tap dry run", {"method": "fitnets", "features": [("1", "1")]}, (hooks_module, "plan_features", stop)),
    ("teacher's val pass", {"val": make_loader()}, (run_module, "Agreement", stop)),
]


@pytest.mark.parametrize("phase, kwargs, patch", BEFORE_TRAINING, ids=[p[0] for p in BEFORE_TRAINING])
def test_an_interrupt_before_training_is_one_clean_line_and_changes_nothing(phase, kwargs, patch, monkeypatch):
    if patch is not None:
        monkeypatch.setattr(*patch)
    big, small = teacher(), net()
    data = kwargs.pop("data", make_loader())
    befores = snapshot(big, data), snapshot(small)
    error = assert_clean_error(kdnb.distill, big, small, data, expect=KeyboardInterrupt, epochs=1, progress=False,
                               plot=False, **kwargs)
    assert "nothing was trained" in str(error) and len(str(error).splitlines()) == 1, phase
    assert_unchanged(befores[0], big, data)
    assert_unchanged(befores[1], small)


def test_an_interrupted_distillation_returns_its_student_and_skips_the_baselines():
    result = kdnb.distill(teacher(), net(), make_loader(), val=make_loader(), epochs=3, baseline=True,
                          callbacks=[StopIn("distill", at=6)], progress=False, plot=False)
    assert result.history.status == "interrupted" and result.history.num_steps == 6 and result.baseline is None
    text = str(result.overview())
    assert "the run was interrupted after 1 of 3 epochs, before the scratch baseline could run" in text
    assert "baseline=True" not in text  # it was given: the summary does not ask for it


@pytest.mark.parametrize("baseline", ["scratch", "pseudo"])
def test_an_interrupted_baseline_is_never_compared_as_if_it_had_finished(baseline):
    result = kdnb.distill(teacher(), net(), make_loader(), val=make_loader(), epochs=2, baseline=("scratch", "pseudo"),
                          callbacks=[StopIn(baseline, at=3)], progress=False, plot=False)
    assert result.history.status == "completed"
    assert result.baseline_histories[baseline].status == "interrupted"
    text = str(result.overview())
    assert "pass baseline=True" not in text and "run with baseline=True" not in text
    assert result.closure(baseline if baseline == "pseudo" else "distilled") is None
    if baseline == "scratch":
        assert "pseudo" not in result.baselines  # the stop ends the baselines
        assert "gap closure: none, the scratch baseline was interrupted after" in text
    else:
        assert "hard pseudo-labels" not in text or "the pseudo-label baseline was interrupted" in text


def test_an_interrupt_in_a_later_seed_keeps_the_seeds_done():
    result = kdnb.distill(teacher(), net(), make_loader(), val=make_loader(), epochs=1, baseline=True,
                          seeds=[0, 1, 2], callbacks=[StopIn("distill", at=2, nth=2)], progress=False, plot=False)
    assert [r.seed for r in result.seed_runs] == [0] and result.history.status == "completed"
    assert "stopped by the stop button at seed 1: the spread is over 1 of 3 seeds" in str(result.overview())


def test_an_interrupt_while_preparing_a_later_seed_keeps_the_seeds_done(monkeypatch):
    monkeypatch.setattr(cache_module, "teacher_logits", interrupted_on_call(cache_module.teacher_logits, 3))
    result = kdnb.distill(teacher(), net(), make_loader(), val=make_loader(), epochs=1, baseline=True, cache=True,
                          seeds=[0, 1, 2], progress=False, plot=False)
    assert [r.seed for r in result.seed_runs] == [0, 1]
    assert "stopped by the stop button at seed 2: the spread is over 2 of 3 seeds" in str(result.overview())
