"""measure, compare, evaluate, datasets.load / transfer_set and the model builders with bad input (issue 14):
one clean KdnbError naming the argument and the fix; the user's model and loader bit-identical afterwards."""
from __future__ import annotations

import pytest
import torch
from badinput import assert_clean_error, assert_unchanged, make_net, snapshot
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import kdnb


def make_loader(n: int = 24, features: int = 6, classes: int = 3, labels=None, batch_size: int = 8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g) if labels is None else labels
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(1))


class Items(Dataset):
    def __init__(self, bad: dict):
        self.x, self.y, self.bad = torch.randn(24, 6), torch.randint(0, 3, (24,)), bad

    def __len__(self):
        return 24

    def __getitem__(self, i):
        return self.bad.get(i, (self.x[i], self.y[i]))


class Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(x)[torch.tensor([99])]  # IndexError from the user's forward


class DictOut(Raises):
    def forward(self, x):
        return {"logits": self.fc(x)}


def on_meta():
    with torch.device("meta"):
        return kdnb.models.mlp(6, [8], 3)


def checked(verb, model, data, names, match=None, **kwargs):
    """verb(model, data, **kwargs) fails cleanly; model and data are as they were."""
    target = model if isinstance(model, nn.Module) else nn.Identity()
    before = snapshot(target, data)
    assert_clean_error(verb, model, data, names=names, match=match, **kwargs)
    assert_unchanged(before, target, data)


# ---- measure ----

MEASURE = [
    (lambda: ("resnet", make_loader()), {}, "model"),
    (lambda: (on_meta(), make_loader()), {}, "meta"),
    (lambda: (make_net(), "abc"), {}, "data_or_example"),
    (lambda: (make_net(), 42), {}, "data_or_example"),
    (lambda: (make_net(), make_loader()), {"batch_size": True}, "batch_size"),
    (lambda: (make_net(), make_loader()), {"batch_size": 0}, "batch_size"),
    (lambda: (make_net(), make_loader()), {"repeats": 0}, "repeats"),
    (lambda: (make_net(), make_loader()), {"warmup": -1}, "warmup"),
    (lambda: (make_net(), make_loader()), {"device": "gpu0"}, "device"),
    (lambda: (make_net(7), make_loader()), {}, "input size"),
    (lambda: (make_net(), torch.randn(4, 7)), {}, "input size"),
    (lambda: (Raises(), torch.randn(4, 6)), {}, "model failed"),
    (lambda: (Raises(), make_loader()), {}, "IndexError"),
    (lambda: (DictOut(), make_loader()), {}, "dict"),
    (lambda: (make_net(classes=2), make_loader()), {}, "labels out of range"),
    (lambda: (make_net(), DataLoader(Items({20: (torch.randn(6), torch.tensor(5))}), batch_size=8)), {}, "batch 3"),
    (lambda: (make_net(), DataLoader(TensorDataset(torch.randn(8, 6), torch.randint(0, 3, (8,))), batch_size=None)),
     {}, "batch_size"),
    (lambda: (make_net(), make_loader(labels=torch.rand(24))), {}, "float32"),
]


@pytest.mark.parametrize("build, kwargs, names", MEASURE, ids=[f"measure-{i}-{n}" for i, (_, _, n) in enumerate(MEASURE)])
def test_measure(build, kwargs, names):
    model, data = build()
    checked(kdnb.measure, model, data, names, repeats=kwargs.pop("repeats", 2), warmup=kwargs.pop("warmup", 0), **kwargs)


def test_measure_leaves_the_loaders_shuffling_alone_when_it_succeeds():
    net, data = make_net(), make_loader()
    before = snapshot(net, data)
    kdnb.measure(net, data, repeats=2, warmup=0)
    assert_unchanged(before, net, data)


# ---- compare ----

COMPARE = [
    (lambda: [make_net()], {}, "models"),
    (lambda: {}, {}, "models"),
    (lambda: {"a": "x"}, {}, "models['a']"),
    (lambda: {"a": make_net()}, {"repeat": 3}, "did you mean 'repeats'"),
    (lambda: {"a": make_net(), "b": make_net(7)}, {}, "input size"),
    (lambda: {"a": make_net(), "b": on_meta()}, {}, "meta"),
    (lambda: {"a": make_net()}, {"batch_size": -2}, "batch_size"),
]


@pytest.mark.parametrize("build, kwargs, names", COMPARE, ids=[f"compare-{i}" for i in range(len(COMPARE))])
def test_compare(build, kwargs, names):
    models, data = build(), make_loader()
    keep = [m for m in (models.values() if isinstance(models, dict) else models) if isinstance(m, nn.Module)]
    befores = [snapshot(m, data) for m in keep]
    assert_clean_error(kdnb.compare, models, data, names=names, **{"repeats": 2, "warmup": 0, **kwargs})
    for before, model in zip(befores, keep):
        assert_unchanged(before, model, data)


# ---- evaluate ----

EVALUATE = [
    (lambda: ("x", make_loader()), "model"),
    (lambda: (make_net(), 5), "data"),
    (lambda: (make_net(), DataLoader(TensorDataset(torch.randn(8, 6)), batch_size=4)), "no labels"),
    (lambda: (make_net(), make_loader(labels=torch.full((24,), 3))), "labels out of range"),
    (lambda: (Raises(), make_loader()), "IndexError"),
    (lambda: (DictOut(), make_loader()), "dict"),
    (lambda: (on_meta(), make_loader()), "meta"),
    (lambda: (make_net(), DataLoader(Items({9: (torch.randn(6), torch.tensor(1.5))}), batch_size=8)), "batch 2"),
    (lambda: (make_net(), [1, 2, 3]), "a batch should be"),
]


@pytest.mark.parametrize("build, names", EVALUATE, ids=[f"evaluate-{i}-{n}" for i, (_, n) in enumerate(EVALUATE)])
def test_evaluate(build, names):
    model, data = build()
    checked(kdnb.evaluate, model, data, names)


# ---- datasets ----

LOAD = [
    (("digit",), {}, "did you mean 'digits'"), ((5,), {}, "dataset"),
    (("digits",), {"batch_size": True}, "batch_size"), (("digits",), {"batch_size": 0}, "batch_size"),
    (("digits",), {"batch_size": 1.5}, "batch_size"), (("digits",), {"seed": "x"}, "seed"),
    (("digits",), {"seed": -1}, "seed"), (("digits",), {"seed": 1.5}, "seed"), (("digits",), {"seed": None}, "seed"),
    (("digits",), {"val_fraction": 0}, "val_fraction"), (("digits",), {"val_fraction": 1.5}, "val_fraction"),
    (("digits",), {"val_fraction": "0.2"}, "val_fraction"), (("digits",), {"flat": "yes"}, "flat"),
    (("synthetic",), {"num_samples": 0}, "num_samples"), (("synthetic",), {"num_samples": 1}, "num_samples"),
    (("digits",), {"num_workers": -1}, "num_workers"),
]


@pytest.mark.parametrize("args, kwargs, names", LOAD, ids=[f"load-{i}-{n}" for i, (_, _, n) in enumerate(LOAD)])
def test_datasets_load(args, kwargs, names):
    assert_clean_error(kdnb.datasets.load, *args, names=names, **kwargs)


@pytest.mark.parametrize("kwargs, names", [
    ({"name": "digits"}, "transfer set"), ({"num_samples": -1}, "num_samples"), ({"batch_size": "8"}, "batch_size"),
    ({"seed": "1"}, "seed"), ({"flat": 1}, "flat"),
])
def test_datasets_transfer_set(kwargs, names):
    assert_clean_error(kdnb.datasets.transfer_set, **{"name": "synthetic", **kwargs}, names=names)


# ---- model builders ----

BUILDERS = [
    (kdnb.models.mlp, (64, 256, 10), {}, "hidden"), (kdnb.models.mlp, (-1, [4], 10), {}, "in_features"),
    (kdnb.models.mlp, (64, [0], 10), {}, "hidden[0]"), (kdnb.models.mlp, (64, [4], 0), {}, "num_classes"),
    (kdnb.models.mlp, (64, [4], 10.5), {}, "num_classes"), (kdnb.models.mlp, (64, "abc", 10), {}, "hidden"),
    (kdnb.models.mlp, (64, [4], 10), {"dropout": 1.5}, "dropout"), (kdnb.models.mlp, (True, [4], 10), {}, "in_features"),
    (kdnb.models.mlp, (10**9, [4], 10), {}, "in_features"), (kdnb.models.mlp, (64, [4, -2], 10), {}, "hidden[1]"),
    (kdnb.models.cnn1d, (), {"width": 0}, "width"), (kdnb.models.cnn1d, (), {"length": "40"}, "length"),
    (kdnb.models.cnn_bn, (-1,), {}, "num_classes"), (kdnb.models.resnet_small, (), {"blocks": 0}, "blocks"),
    (kdnb.models.mobile_cnn, (), {"in_channels": "1"}, "in_channels"),
    (kdnb.models.lenet_300_100, (), {"scale": -1}, "scale"),
]


@pytest.mark.parametrize("builder, args, kwargs, names", BUILDERS,
                         ids=[f"{b.__name__}-{n}-{i}" for i, (b, _, _, n) in enumerate(BUILDERS)])
def test_model_builders(builder, args, kwargs, names):
    assert_clean_error(builder, *args, names=names, **kwargs)
