"""kdnb.prune, importance, make_permanent, sensitivity and measure(example) with bad input (issue 14): each case
is one clean KdnbError naming the argument and the fix, and the user's model (in place or not) and loaders are
bit-identical afterwards (tests/badinput.py says what that means)."""
from __future__ import annotations

import sys

import pytest
import torch
from badinput import (
    Items, assert_clean_error, assert_unchanged, dict_batches, empty, interrupted_on_call, labels, make_loader,
    make_net, on_meta, snapshot
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kdnb
from kdnb.engine.events import Callback
from kdnb.engine.prune import importance


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return {"logits": self.out(self.fc(x).relu())}


class NoLogits(DictOut):
    """Its output holds no tensor kdnb could take as logits."""

    def forward(self, x):
        return {"score": float(self.out(self.fc(x)).sum())}


class Raises(DictOut):
    def __init__(self, error: type[BaseException]):
        super().__init__()
        self.error = error

    def forward(self, x):
        if not torch.compiler.is_compiling() and x.shape[0] > 0:
            raise self.error("index 7 is out of bounds for dimension 0")
        return self.out(self.fc(x))


def frozen():
    net = make_net()
    net.requires_grad_(False)
    return net


def unlabelled():
    return DataLoader(TensorDataset(torch.randn(8, 6)), batch_size=4)


def unbatched():
    return DataLoader(TensorDataset(torch.randn(8, 6), torch.randint(0, 3, (8,))), batch_size=None)


class Hooked(Callback):
    def on_step_end(self, state):
        pass


DEFAULT = object()


def pruned_fails(model, names, match=None, sparsity=0.5, data=DEFAULT, inplace=False, **kwargs):
    """prune(model, sparsity, data=..., **kwargs) is a clean error naming ``names``; the model and every loader
    given are bit-identical afterwards."""
    data = make_loader() if data is DEFAULT else data
    loaders = [data, kwargs.get("val")]
    target = model if isinstance(model, nn.Module) else nn.Identity()
    befores = [snapshot(target, data)] + [snapshot(nn.Identity(), loader) for loader in loaders[1:]]
    options = {"progress": False, "plot": False, "data": data, "inplace": inplace, **kwargs}
    error = assert_clean_error(kdnb.prune, model, sparsity, names=names, match=match, **options)
    assert_unchanged(befores[0], target, data)
    for before, loader in zip(befores[1:], loaders[1:]):
        assert_unchanged(before, nn.Identity(), loader)
    return error


# ---- every argument of prune ----

ARGUMENTS = [
    # sparsity
    ({"sparsity": 1.0}, "sparsity"), ({"sparsity": -0.1}, "sparsity"), ({"sparsity": "0.5"}, "sparsity"),
    ({"sparsity": None}, "sparsity"), ({"sparsity": True}, "sparsity"), ({"sparsity": float("nan")}, "sparsity"),
    ({"sparsity": float("inf")}, "sparsity"), ({"sparsity": [0.5]}, "sparsity"),
    # criterion
    ({"criterion": "taylr"}, "did you mean 'taylor'"), ({"criterion": 5}, "criterion"),
    ({"criterion": None}, "criterion"), ({"criterion": ""}, "criterion"), ({"criterion": ["l1"]}, "criterion"),
    ({"criterion": "taylor", "data": None}, "needs data"), ({"criterion": "obs", "data": None}, "needs data"),
    ({"criterion": "wanda", "data": None}, "needs data"), ({"criterion": "slimming"}, "structured=True"),
    ({"criterion": "slimming", "structured": True}, "BatchNorm"), ({"criterion": "thinet"}, "thinet"),
    # structured, scope, pattern
    ({"structured": "yes"}, "structured"), ({"structured": 1}, "structured"), ({"structured": None}, "structured"),
    ({"scope": "layer"}, "unknown scope"), ({"scope": 5}, "scope"), ({"scope": None}, "scope"),
    ({"scope": ["global"]}, "scope"), ({"scope": "macs"}, "structured=True"), ({"scope": "latency"}, "structured=True"),
    ({"max_layer_sparsity": 0, "structured": True}, "max_layer_sparsity"),
    ({"max_layer_sparsity": 1.5, "structured": True}, "max_layer_sparsity"),
    ({"max_layer_sparsity": -0.2, "structured": True, "scope": "macs"}, "max_layer_sparsity"),
    ({"max_layer_sparsity": float("nan"), "structured": True}, "max_layer_sparsity"),
    ({"max_layer_sparsity": "0.5", "structured": True}, "max_layer_sparsity"),
    ({"max_layer_sparsity": True, "structured": True}, "max_layer_sparsity"),
    ({"max_layer_sparsity": 0.5}, "structured=True"),
    ({"pattern": "2:4", "structured": True}, "structured=False"), ({"pattern": "2:4", "sparsity": 0.3}, "sparsity=0.5"),
    ({"pattern": "4:2"}, "pattern"), ({"pattern": "abc"}, "pattern"), ({"pattern": 5}, "pattern"),
    ({"pattern": "0:4", "sparsity": 0.99}, "pattern"), ({"pattern": "1:5", "sparsity": 0.8}, "multiple of 5"),
    ({"pattern": ["2:4"]}, "pattern"),
    # data and val
    ({"data": [1, 2, 3]}, "data"), ({"data": torch.randn(8, 6)}, "DataLoader"), ({"data": 42}, "DataLoader"),
    ({"data": "abc"}, "DataLoader"), ({"data": empty()}, "empty"), ({"data": dict_batches()}, "target"),
    ({"data": unbatched()}, "batch_size"), ({"data": make_loader(features=7)}, "input size"),
    ({"data": make_loader(features=7), "criterion": "taylor"}, "input size"),
    ({"data": make_loader(features=7), "structured": True}, "input size"),
    ({"data": labels(torch.rand(8))}, "float32"), ({"data": labels(torch.tensor([0, 1, 2, 9] * 2))}, "out of range"),
    ({"data": labels(torch.tensor([0, 1, 2, 9] * 2)), "criterion": "hessian"}, "out of range"),
    ({"data": unlabelled(), "criterion": "taylor"}, "labels"), ({"data": unlabelled(), "finetune": 1}, "labels"),
    ({"data": DataLoader(Items({20: (torch.randn(6), torch.tensor(5))}), batch_size=8), "criterion": "taylor"},
     "batch 3"),
    ({"data": DataLoader(Items({20: (torch.randn(7), torch.tensor(1))}), batch_size=8)}, "batch 3"),
    ({"val": [1, 2, 3]}, "val"), ({"val": torch.randn(8, 6)}, "val"), ({"val": make_loader(features=5)}, "input size"),
    ({"val": make_loader(labels=torch.full((32,), 5))}, "out of range"), ({"val": unlabelled()}, "no labels"),
    ({"val": empty()}, "val is empty"), ({"val": dict_batches()}, "val"),
    ({"val": DataLoader(Items({30: (torch.randn(6), torch.tensor(7))}), batch_size=8)}, "batch 4"),
    # reconstruct, calibration
    ({"reconstruct": "yes"}, "reconstruct"), ({"reconstruct": 1}, "reconstruct"),
    ({"reconstruct": True, "data": None}, "data="), ({"reconstruct": "least-squares"}, "'least_squares'"),
    ({"reconstruct": "least_squares", "data": None}, "data="),
    ({"calibration_samples": 0}, "calibration_samples"), ({"calibration_samples": -5}, "calibration_samples"),
    ({"calibration_samples": 1.5}, "calibration_samples"), ({"calibration_samples": "100"}, "calibration_samples"),
    # finetune, schedule, steps
    ({"finetune": -1}, "finetune"), ({"finetune": 1.5}, "finetune"), ({"finetune": "2"}, "finetune"),
    ({"finetune": True}, "finetune"), ({"finetune": None}, "finetune"), ({"finetune": 2, "data": None}, "data="),
    ({"schedule": "gradual"}, "unknown schedule"), ({"schedule": 5}, "schedule"), ({"schedule": None}, "schedule"),
    ({"schedule": "oneshot", "steps": 3}, "iterative"), ({"schedule": "agp"}, "finetune >= 1"),
    ({"schedule": "iterative", "steps": 0}, "steps"), ({"schedule": "iterative", "steps": -1}, "steps"),
    ({"schedule": "iterative", "steps": 1.5}, "steps"), ({"schedule": "iterative", "steps": "3"}, "steps"),
    ({"schedule": "agp", "finetune": 1, "steps": True}, "steps"),
    # distill, control, KD weights
    ({"distill": "yes", "finetune": 1}, "distill"), ({"distill": True}, "finetune >= 1"),
    ({"distill": True, "finetune": 1, "temperature": 0}, "temperature"),
    ({"distill": True, "finetune": 1, "temperature": "4"}, "temperature"),
    ({"distill": True, "finetune": 1, "temperature": float("nan")}, "temperature"),
    ({"distill": True, "finetune": 1, "alpha": 1.5}, "alpha"),
    ({"distill": True, "finetune": 1, "alpha": "0.5"}, "alpha"),
    ({"temperature": -1}, "temperature"), ({"alpha": -0.1}, "alpha"),
    ({"control": "yes", "finetune": 1}, "control"), ({"control": True, "data": None}, "data="),
    # inplace, prune_again, example
    ({"inplace": "yes"}, "inplace"), ({"inplace": 1}, "inplace"), ({"inplace": None}, "inplace"),
    ({"prune_again": "yes"}, "prune_again"),
    ({"example": "x"}, "example"), ({"example": 5}, "example"), ({"example": [1.0] * 6}, "example"),
    ({"example": torch.randn(2, 7), "structured": True}, "example"),
    ({"example": torch.randn(2, 7), "data": None, "structured": True}, "example"),
    ({"example": torch.randint(0, 3, (2, 6)), "data": None, "structured": True}, "example"),
    ({"example": torch.randn(6), "data": None, "structured": True}, "example"),
    # slimming, hessian
    ({"criterion": "slimming", "structured": True, "slimming_epochs": -1}, "slimming_epochs"),
    ({"criterion": "slimming", "structured": True, "slimming_epochs": 1.5}, "slimming_epochs"),
    ({"criterion": "slimming", "structured": True, "slimming_epochs": "2"}, "slimming_epochs"),
    ({"criterion": "slimming", "structured": True, "slimming_l1": -1}, "slimming_l1"),
    ({"criterion": "slimming", "structured": True, "slimming_l1": float("nan")}, "slimming_l1"),
    ({"criterion": "slimming", "structured": True, "slimming_l1": "1e-3"}, "slimming_l1"),
    ({"slimming_epochs": -1}, "slimming_epochs"),
    ({"criterion": "hessian", "hessian_estimator": "exact"}, "unknown hessian_estimator"),
    ({"criterion": "hessian", "hessian_estimator": 5}, "hessian_estimator"),
    ({"hessian_estimator": None}, "hessian_estimator"),
    # the training settings
    ({"optimizer": "adam", "finetune": 1}, "optimizer"), ({"optimizer": 5, "finetune": 1}, "optimizer"),
    ({"optimizer": lambda p: 5, "finetune": 1}, "optimizer"),
    ({"lr": float("nan")}, "lr"), ({"lr": -1}, "lr"), ({"lr": "0.1"}, "lr"), ({"lr": 0, "finetune": 1}, "lr"),
    ({"scheduler": "linear"}, "scheduler"), ({"scheduler": 5, "finetune": 1}, "scheduler"),
    ({"weight_decay": -1, "finetune": 1}, "weight_decay"), ({"weight_decay": float("nan")}, "weight_decay"),
    ({"weight_decay": "1"}, "weight_decay"), ({"weight_decay": True}, "weight_decay"),
    ({"weight_decay": 0.5, "optimizer": lambda p: torch.optim.SGD(p, lr=0.1), "finetune": 1}, "set the decay in your"),
    ({"amp": "yes"}, "amp"), ({"grad_clip": -1}, "grad_clip"), ({"grad_clip": "1"}, "grad_clip"),
    ({"device": "gpu0"}, "device"), ({"device": 3.5}, "device"), ({"device": None}, "device"),
    ({"seed": "abc"}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": 2**70}, "seed"),
    ({"callbacks": 5}, "callbacks"), ({"callbacks": [1]}, "callbacks"), ({"callbacks": "abc"}, "callbacks"),
    ({"callbacks": [Hooked]}, "callbacks"),
    ({"progress": "no"}, "progress"), ({"plot": "yes"}, "plot"),
]


def _case_id(index: int, kwargs: dict, names: str) -> str:
    return f"{index}-" + ",".join(f"{k}={v!r}"[:24] for k, v in kwargs.items())


@pytest.mark.parametrize("inplace", [False, True], ids=["copy", "inplace"])
@pytest.mark.parametrize("kwargs, names", ARGUMENTS, ids=[_case_id(i, k, n) for i, (k, n) in enumerate(ARGUMENTS)])
def test_each_argument_of_prune_is_checked_at_the_entry(kwargs, names, inplace):
    kwargs = {"inplace": inplace, **kwargs}  # a bad inplace= is its own case
    model = bn_net() if kwargs.get("criterion") == "slimming" and "BatchNorm" not in names else make_net()
    pruned_fails(model, names=names, **kwargs)


MODELS = [
    (lambda: "resnet", {}, "model"), (lambda: None, {}, "model"), (on_meta, {}, "meta"),
    (lambda: nn.Sequential(nn.ReLU()), {}, "no prunable layers"), (NoLogits, {"val": make_loader()}, "logits="),
    (NoLogits, {"criterion": "taylor"}, "logits="), (NoLogits, {"structured": True}, "logits="),
    (lambda: Raises(IndexError), {}, "IndexError"), (lambda: Raises(KeyError), {"criterion": "hessian"}, "KeyError"),
    (lambda: Raises(AttributeError), {"structured": True}, "AttributeError"),
    (frozen, {"criterion": "taylor"}, "requires_grad"), (frozen, {"criterion": "hessian"}, "requires_grad"),
    (frozen, {"finetune": 1}, "requires_grad"),
    (lambda: kdnb.models.mlp(6, [8], 2), {}, "out of range"),
    (lambda: kdnb.models.mlp(7, [8], 3), {"criterion": "obs"}, "input size"),
    (lambda: kdnb.models.mlp(7, [8], 3), {"criterion": "wanda", "reconstruct": False}, "input size"),
]


@pytest.mark.parametrize("inplace", [False, True], ids=["copy", "inplace"])
@pytest.mark.parametrize("build, kwargs, names", MODELS, ids=[f"{i}-{n}" for i, (_, _, n) in enumerate(MODELS)])
def test_models_prune_cannot_work_on(build, kwargs, names, inplace):
    pruned_fails(build(), names=names, inplace=inplace, **kwargs)


def test_a_model_returning_a_dict_prunes_where_only_its_layers_inputs_are_read():
    """Scoring by magnitude and re-solving read each layer's inputs, not the model's output (a dict here)."""
    model = DictOut()
    before = snapshot(model)
    result = kdnb.prune(model, 0.5, data=make_loader(), progress=False, plot=False)
    assert_unchanged(before, model)
    assert result.reconstructed and result.sparsity == pytest.approx(0.5, abs=0.02)


def test_a_prune_result_instead_of_a_model():
    result = kdnb.prune(make_net(), 0.5, progress=False)
    assert_clean_error(kdnb.prune, result, 0.6, names="PruneResult", progress=False)


def test_a_pruned_model_again_needs_prune_again():
    result = kdnb.prune(make_net(), 0.5, progress=False)
    before = snapshot(result.model)
    assert_clean_error(kdnb.prune, result.model, 0.6, names="prune_again", progress=False, inplace=True)
    assert_unchanged(before, result.model)


# ---- importance, make_permanent, sensitivity, measure(example) ----

IMPORTANCE = [
    (lambda: ("resnet",), {}, "model"), (lambda: (on_meta(),), {}, "meta"),
    (lambda: (make_net(), "taylr"), {}, "did you mean 'taylor'"), (lambda: (make_net(), 5), {}, "criterion"),
    (lambda: (make_net(), "taylor"), {}, "needs data"), (lambda: (make_net(), "hessian", [1, 2]), {}, "data"),
    (lambda: (make_net(), "taylor", torch.randn(8, 6)), {}, "DataLoader"),
    (lambda: (make_net(), "taylor", make_loader(features=7)), {}, "input size"),
    (lambda: (make_net(), "taylor", unlabelled()), {}, "labels"),
    (lambda: (make_net(), "l1"), {"structured": "yes"}, "structured"),
    (lambda: (make_net(), "l1"), {"structured": True}, "example"),
    (lambda: (make_net(), "l1"), {"structured": True, "example": "x"}, "example"),
    (lambda: (make_net(), "l1"), {"structured": True, "example": torch.randn(2, 7)}, "example"),
    (lambda: (make_net(), "random"), {"seed": "x"}, "seed"),
    (lambda: (make_net(), "hessian", make_loader()), {"hessian_estimator": "exact"}, "hessian_estimator"),
    (lambda: (make_net(), "taylor", make_loader()), {"calibration_samples": 0}, "calibration_samples"),
    (lambda: (make_net(), "wanda", make_loader()), {"calibration_samples": "64"}, "calibration_samples"),
    (lambda: (bn_net(), "slimming", make_loader()), {"structured": True, "slimming_epochs": -1}, "slimming_epochs"),
    (lambda: (bn_net(), "slimming", make_loader()), {"structured": True, "lr": float("nan")}, "lr"),
    (lambda: (bn_net(), "slimming", make_loader()), {"structured": True, "device": "gpu0"}, "device"),
    (lambda: (frozen(), "taylor", make_loader()), {}, "requires_grad"),
    (lambda: (NoLogits(), "taylor", make_loader()), {}, "logits="),
    (lambda: (make_net(), "taylor", make_loader(labels=torch.full((32,), 4))), {}, "out of range"),
]


@pytest.mark.parametrize("build, kwargs, names", IMPORTANCE, ids=[f"importance-{i}-{n}" for i, (_, _, n)
                                                                   in enumerate(IMPORTANCE)])
def test_importance(build, kwargs, names):
    args = build()
    model = args[0] if isinstance(args[0], nn.Module) else nn.Identity()
    data = args[2] if len(args) > 2 else None
    before = snapshot(model, data)
    assert_clean_error(importance, *args, names=names, **kwargs)
    assert_unchanged(before, model, data)


@pytest.mark.parametrize("value, names", [("x", "model"), (None, "model"), (5, "model"), (on_meta(), "meta")])
def test_make_permanent(value, names):
    assert_clean_error(kdnb.make_permanent, value, names=names)


SENSITIVITY = [
    (lambda: ("resnet", make_loader()), {}, "model"), (lambda: (make_net(), "val"), {}, "val"),
    (lambda: (make_net(), [1, 2, 3]), {}, "val"), (lambda: (make_net(), unlabelled()), {}, "labels"),
    (lambda: (make_net(), make_loader(features=7)), {}, "input size"),
    (lambda: (make_net(), make_loader()), {"sparsities": 0.5}, "sparsities"),
    (lambda: (make_net(), make_loader()), {"sparsities": []}, "sparsities"),
    (lambda: (make_net(), make_loader()), {"sparsities": [0.5, 1.0]}, "sparsit"),
    (lambda: (make_net(), make_loader()), {"sparsities": "0.5"}, "sparsities"),
    (lambda: (make_net(), make_loader()), {"criterion": "taylr"}, "did you mean 'taylor'"),
    (lambda: (make_net(), make_loader()), {"criterion": "taylor"}, "needs data"),
    (lambda: (make_net(), make_loader()), {"layers": ["9.weight"]}, "unknown layer"),
    (lambda: (make_net(), make_loader()), {"layers": "0.weight"}, "layers"),
    (lambda: (make_net(), make_loader()), {"layers": []}, "layers"),
    (lambda: (make_net(), make_loader()), {"structured": "yes"}, "structured"),
    (lambda: (make_net(), make_loader()), {"structured": True, "example": "x"}, "example"),
    (lambda: (make_net(), make_loader()), {"data": [1, 2]}, "data"),
    (lambda: (make_net(), make_loader()), {"seed": "x"}, "seed"),
    (lambda: (make_net(), make_loader()), {"lr": -1}, "lr"),
    (lambda: (make_net(), make_loader()), {"device": "gpu0"}, "device"),
    (lambda: (make_net(), make_loader()), {"callbacks": 5}, "callbacks"),
    (lambda: (make_net(), make_loader(labels=torch.full((32,), 4))), {}, "out of range"),
    (lambda: (NoLogits(), make_loader()), {}, "logits="),
]


@pytest.mark.parametrize("build, kwargs, names", SENSITIVITY, ids=[f"sensitivity-{i}-{n}" for i, (_, _, n)
                                                                   in enumerate(SENSITIVITY)])
def test_sensitivity(build, kwargs, names):
    model, val = build()
    target = model if isinstance(model, nn.Module) else nn.Identity()
    before = snapshot(target, val)
    assert_clean_error(kdnb.sensitivity, model, val, names=names, progress=False, **kwargs)
    assert_unchanged(before, target, val)


EXAMPLES = [
    (torch.randint(0, 3, (4, 6)), "input batch"), (torch.randn(0, 6), "data_or_example"),
    (torch.zeros(4, 6, dtype=torch.bool), "data_or_example"), (torch.randn(4, 6, dtype=torch.complex64), "dtype"),
    ([1.0] * 6, "data_or_example"), (torch.randn(4, 7), "input size"), (torch.tensor(3.0), "data_or_example"),
]


@pytest.mark.parametrize("example, names", EXAMPLES, ids=[f"example-{i}-{n}" for i, (_, n) in enumerate(EXAMPLES)])
def test_measure_with_a_bad_example(example, names):
    net = make_net()
    before = snapshot(net)
    assert_clean_error(kdnb.measure, net, example, names=names, repeats=2, warmup=0)
    assert_unchanged(before, net)


# ---- in-place atomicity: a failure at any phase gives the model back exactly as it came ----

from kdnb.engine.prune.score import stream as stream_module  # noqa: E402
from kdnb.engine.prune.score import estimate as estimate_module  # noqa: E402
from kdnb.engine.prune import pipeline  # noqa: E402
from torch.nn.utils import parametrize  # noqa: E402


class Halve(nn.Module):
    def forward(self, w):
        return w * 0.5


def user_model(batchnorm: bool = False) -> nn.Module:
    """What a user may hand in: a forward hook of their own, a parametrization, a submodule in eval mode."""
    net = bn_net() if batchnorm else make_net()
    net.register_forward_hook(lambda module, inputs, output: None)
    parametrize.register_parametrization(net[-1], "weight", Halve())
    net[0].eval()
    return net


def after(real, then):
    """``real``, then ``then()`` (which raises): the phase did its work on the model, then failed."""
    def call(*args, **kwargs):
        real(*args, **kwargs)
        then()
    return call


def fail(error):
    def raise_it(*args, **kwargs):
        raise error("injected: the phase failed")
    return raise_it


class StopAt(Callback):
    """Raises ``error`` at step ``at`` of the run titled like ``title``."""

    def __init__(self, error, at=2, title=""):
        self.error, self.at, self.title = error, at, title

    def on_step_end(self, state):
        if state.step == self.at and state.title.startswith(self.title):
            raise self.error("injected: the run failed")


def phases(error):
    """(phase, prune's options, what to patch: (module, name, replacement) or None)."""
    data = make_loader()
    return [
        ("gradient statistics", {"criterion": "taylor"}, (estimate_module, "squared_gradients", fail(error))),
        ("hessian diagonal", {"criterion": "hessian"}, (estimate_module, "fisher_diagonal", fail(error))),
        ("calibration pass", {"criterion": "obs"}, (stream_module, "statistics", fail(error))),
        ("masking", {}, (pipeline, "apply_masks", after(pipeline.apply_masks, fail(error)))),
        ("reconstruction", {}, (pipeline, "reconstruct_layers", after(pipeline.reconstruct_layers, fail(error)))),
        ("fine-tuning", {"finetune": 2, "callbacks": [StopAt(error, at=3)]}, None),
        ("structured deletion", {"structured": True},
         (pipeline, "remove_channels", after(pipeline.remove_channels, fail(error)))),
        ("slimming's L1 phase", {"criterion": "slimming", "structured": True, "callbacks": [StopAt(error)]}, None),
        ("iterative round 2", {"schedule": "iterative", "steps": 2, "finetune": 1,
                               "callbacks": [StopAt(error, at=1, title="finetune 2/2")]}, None),
        ("agp update", {"schedule": "agp", "steps": 2, "finetune": 2,
                        "callbacks": [StopAt(error, at=len(data) + 2)]}, None),
        ("control run", {"finetune": 1, "control": True, "callbacks": [StopAt(error, title="control", at=1)]}, None),
    ]


@pytest.mark.parametrize("index", range(11), ids=[p[0] for p in phases(ValueError)])
def test_an_inplace_prune_that_fails_at_any_phase_restores_the_model(index, monkeypatch):
    phase, options, patch = phases(ValueError)[index]
    if patch is not None:
        monkeypatch.setattr(*patch)
    model, data = user_model(batchnorm=options.get("criterion") == "slimming"), make_loader()
    before = snapshot(model, data)
    assert_clean_error(kdnb.prune, model, 0.5, data=data, inplace=True, expect=ValueError, match="injected",
                       progress=False, plot=False, **options)
    assert_unchanged(before, model, data)
    assert parametrize.is_parametrized(model[-1], "weight") and not hasattr(model[1], "weight_orig"), phase


# ---- the stop button at every phase: what it has, or one clean KeyboardInterrupt with nothing changed ----

NOTHING_YET = ["gradient statistics", "hessian diagonal", "calibration pass", "masking", "reconstruction",
               "slimming's L1 phase"]


@pytest.mark.parametrize("phase", NOTHING_YET)
def test_an_interrupt_before_anything_is_pruned_is_one_clean_line_and_changes_nothing(phase, monkeypatch):
    _, options, patch = next(p for p in phases(KeyboardInterrupt) if p[0] == phase)
    if patch is not None:
        monkeypatch.setattr(*patch)
    model, data = user_model(batchnorm=options.get("criterion") == "slimming"), make_loader()
    before = snapshot(model, data)
    error = assert_clean_error(kdnb.prune, model, 0.5, data=data, inplace=True, expect=KeyboardInterrupt,
                               progress=False, plot=False, **options)
    assert "nothing was changed" in str(error) and len(str(error).splitlines()) == 1
    assert_unchanged(before, model, data)


@pytest.mark.parametrize("finetune", [0, 1])
def test_an_interrupt_while_deleting_channels_returns_the_masked_model(finetune, monkeypatch):
    """Half-deleted layers are no model: the (fine-tuned) model comes back with its channels masked to zero,
    which computes what deleting them would, and the result says so (it raised before)."""
    _, options, patch = next(p for p in phases(KeyboardInterrupt) if p[0] == "structured deletion")
    monkeypatch.setattr(*patch)
    model, data = make_net(), make_loader()
    x = next(iter(data))[0]
    result = kdnb.prune(model, 0.5, data=data, val=make_loader(), finetune=finetune, progress=False, plot=False,
                        **options)
    assert result.history.status == "interrupted" and "masked to zero" in result.history.message
    assert result.masks and result.sparsity > 0.3 and not result.channels
    kept = sum(int(m.sum()) for m in result.masks.values())
    assert kept < sum(m.numel() for m in result.masks.values())
    assert torch.isfinite(result.model(x)).all()
    assert "masked to zero" in str(result.summary())


def test_an_interrupt_in_importance_is_one_clean_line_and_in_sensitivity_returns_the_layers_done(monkeypatch):
    sensitivity_module = sys.modules["kdnb.engine.prune.sensitivity"]  # the package exports the function by that name
    from kdnb.engine.prune.score import importance as importance_module

    model, data = make_net(), make_loader()
    before = snapshot(model, data)
    monkeypatch.setattr(importance_module, "compute_scores", fail(KeyboardInterrupt))
    error = assert_clean_error(importance, model, "l1", data, expect=KeyboardInterrupt)
    assert "no scores yet, and the model is as given" in str(error)
    error = assert_clean_error(kdnb.sensitivity, model, data, expect=KeyboardInterrupt, progress=False, plot=False)
    assert "before any layer was pruned" in str(error)
    assert_unchanged(before, model, data)
    monkeypatch.undo()
    monkeypatch.setattr(sensitivity_module, "_masked_accuracy",
                        interrupted_on_call(sensitivity_module._masked_accuracy, 3))
    result = kdnb.sensitivity(model, data, sparsities=[0.5, 0.9], progress=False, plot=False)
    assert len(result.accuracy) == 1 and result.stopped and "1 of 2 layers" in repr(result)
    assert_unchanged(before, model, data)


def test_an_interrupt_in_a_later_round_returns_the_rounds_done(monkeypatch):
    monkeypatch.setattr(pipeline, "compute_scores", interrupted_on_call(pipeline.compute_scores, 2))
    model, data = make_net(), make_loader()
    result = kdnb.prune(model, 0.9, data=data, val=make_loader(), schedule="iterative", steps=3, finetune=1,
                        progress=False, plot=False)
    assert result.history.status == "interrupted" and len(result.trajectory) == 1
    assert result.sparsity == pytest.approx(result.trajectory[0]["sparsity"]) and result.sparsity < 0.9
    assert "interrupted in pruning round 2 of 3; the model is as after round 1" in str(result.summary())
    assert "[interrupted]" in str(result.summary())
    assert torch.isfinite(result.model(torch.randn(2, 6))).all()


def test_an_interrupt_in_an_agp_update_keeps_the_updates_done_and_a_consistent_model(monkeypatch):
    calls = {"n": 0}
    real = pipeline._prune_to

    def prune_to(run, target, resolve):
        calls["n"] += 1
        if calls["n"] == 2:  # half of the update done: masks applied, then the stop button
            pipeline.apply_masks(run.work, {name: torch.zeros_like(w, dtype=torch.bool)
                                            for name, w in run.weights.items()})
            raise KeyboardInterrupt
        return real(run, target, resolve)

    monkeypatch.setattr(pipeline, "_prune_to", prune_to)
    result = kdnb.prune(make_net(), 0.8, data=make_loader(), schedule="agp", steps=3, finetune=2, progress=False,
                        plot=False)
    assert result.history.status == "interrupted" and len(result.trajectory) == 1
    masks = result.masks
    assert all(bool(m.any()) for m in masks.values())  # the half-done update was rolled back
    assert sum(int((~m).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values()) == \
        pytest.approx(result.trajectory[0]["sparsity"])


def test_an_interrupt_while_fine_tuning_returns_the_pruned_model_and_says_how_far_it_got():
    result = kdnb.prune(make_net(), 0.5, data=make_loader(), finetune=3, callbacks=[StopAt(KeyboardInterrupt, at=6)],
                        progress=False, plot=False)
    assert result.history.status == "interrupted" and result.history.num_steps == 6
    assert "1 of 3 epoch(s)" in str(result.summary()) or "of 3" in result._headline()
    assert result.sparsity == pytest.approx(0.5, abs=0.02)


def test_an_interrupted_control_run_leaves_the_pruned_result_whole():
    result = kdnb.prune(make_net(), 0.5, data=make_loader(), finetune=1, control=True,
                        callbacks=[StopAt(KeyboardInterrupt, title="control", at=1)], progress=False, plot=False)
    assert result.history.status == "completed" and result.control is not None


def test_pruning_a_copy_of_a_parametrized_model_leaves_the_original_working():
    """A parametrized module's class is its own: folding the copy must not take the property from the original."""
    model, x = user_model(), torch.randn(4, 6)
    before, expected = snapshot(model), model(x)
    kdnb.prune(model, 0.5, progress=False)
    assert_unchanged(before, model)
    assert torch.equal(model(x), expected)


# ---- tied weights (issue 14, class 7): a weight two layers share is scored, masked and kept as one ----

class Tied(nn.Module):
    """An encoder layer and its mirror share one weight; the layers in front of them are free."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.front, self.hidden = nn.Linear(6, 12), nn.Linear(12, 8)
        self.enc, self.dec, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.dec.weight = self.enc.weight

    def forward(self, x):
        x = self.hidden(self.front(x).relu()).relu()
        return self.out(self.dec(self.enc(x).relu()).relu())


@pytest.mark.parametrize("criterion", ["taylor", "hessian"])
def test_unstructured_pruning_masks_both_names_of_a_tied_weight_alike(criterion):
    model = Tied()
    before = snapshot(model)
    result = kdnb.prune(model, 0.5, criterion=criterion, data=make_loader(), progress=False, plot=False)
    assert_unchanged(before, model)
    assert result.sparsity == pytest.approx(0.5, abs=0.02)
    assert torch.equal(result.masks["enc.weight"], result.masks["dec.weight"])  # both names, one mask
    assert not bool(result.masks["enc.weight"].all())  # and the tied weight was scored (under both names)
    assert torch.equal(result.model.enc.weight, result.model.dec.weight)
    plain = kdnb.make_permanent(result.model)
    assert plain.enc.weight is plain.dec.weight  # still one Parameter: training keeps them equal


@pytest.mark.parametrize("criterion", ["taylor", "hessian"])
def test_structured_pruning_keeps_a_tied_weight_whole_and_shared(criterion):
    model, x = Tied(), torch.randn(4, 6)
    with pytest.warns(RuntimeWarning, match=r"dec.weight, enc.weight share one weight \(tied\)"):
        result = kdnb.prune(model, 0.3, criterion=criterion, structured=True, data=make_loader(), progress=False,
                            plot=False)
    small = result.model
    assert small.enc.weight is small.dec.weight and small.enc.weight.shape == (8, 8)
    assert small.front.out_features < 12 and small.hidden.in_features == small.front.out_features
    assert result.sparsity == pytest.approx(0.3, abs=0.05)
    assert torch.isfinite(small(x)).all() and small(x).shape == (4, 3)


def test_a_failed_inplace_prune_of_a_tied_model_gives_it_back_still_tied(monkeypatch):
    monkeypatch.setattr(pipeline, "apply_masks", after(pipeline.apply_masks, fail(ValueError)))
    model, data = Tied(), make_loader()
    before = snapshot(model, data)
    assert_clean_error(kdnb.prune, model, 0.5, criterion="taylor", data=data, inplace=True, expect=ValueError,
                       match="injected", progress=False, plot=False)
    assert_unchanged(before, model, data)
    assert model.enc.weight is model.dec.weight


@pytest.mark.parametrize("structured", [False, True])
def test_the_explorer_scores_a_tied_weight_once(structured):
    scores = importance(Tied(), "hessian", make_loader(), structured=structured)
    if structured:
        assert scores.channels and all(not root.startswith(("enc", "dec")) for root in scores.channels)
    else:  # one Parameter, scored once under its first name (its statistics summed over both uses)
        assert "enc.weight" in scores.weights and "dec.weight" not in scores.weights
        assert bool(scores.weights["enc.weight"].ne(0).any())


@pytest.mark.cuda
def test_an_inplace_prune_that_fails_on_the_gpu_gives_the_model_back_on_its_device():
    model, data = user_model(), make_loader()
    before = snapshot(model, data)
    assert_clean_error(kdnb.prune, model, 0.5, data=data, inplace=True, device="cuda", finetune=1,
                       callbacks=[StopAt(ValueError, at=2)], expect=ValueError, progress=False, plot=False)
    assert_unchanged(before, model, data)  # every tensor back on the CPU, bit for bit
