"""Soft labels only (alpha=0) on data that lacks a class: Hinton et al. 2015's omitted-class experiment,
the regime of tutorial 01 and `bench/distill_quality.py --regime omitted-class`."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import kdnb

OMITTED = 3


@pytest.fixture(scope="module")
def digits():
    train, val = kdnb.datasets.load("digits", batch_size=64, seed=0)
    torch.manual_seed(0)
    teacher = kdnb.models.mlp(64, [128], 10)
    kdnb.train(teacher, train, epochs=5, lr=3e-3, progress=False)
    return teacher.eval(), train, val


def loader(x, y):
    return DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))


def student():
    torch.manual_seed(1)
    return kdnb.models.mlp(64, [32], 10)


def accuracy_on(model, val, label):
    x, y = val.dataset.tensors
    with torch.no_grad():
        return (model(x[y == label]).argmax(dim=1) == label).float().mean().item()


def test_with_alpha_0_the_labels_are_unused(digits):
    teacher, train, _ = digits
    x, y = train.dataset.tensors
    scrambled = (y + 1 + torch.randint(0, 9, y.shape, generator=torch.Generator().manual_seed(0))) % 10
    assert not torch.equal(scrambled, y)
    runs = [kdnb.distill(teacher, student(), loader(x, labels), alpha=0.0, epochs=2, progress=False).student
            for labels in (y, scrambled)]
    for a, b in zip(*(run.state_dict().values() for run in runs)):
        assert torch.equal(a, b)


def test_soft_labels_teach_a_class_the_data_lacks_and_hard_pseudo_labels_do_not(digits):
    teacher, train, val = digits
    x, y = train.dataset.tensors
    lacking = y != OMITTED
    assert accuracy_on(teacher, val, OMITTED) > 0.9
    res = kdnb.distill(teacher, student(), loader(x[lacking], y[lacking]), val, temperature=8.0, alpha=0.0,
                       epochs=15, lr=3e-3, baseline=("scratch", "pseudo"), progress=False)
    assert accuracy_on(res.baselines["scratch"], val, OMITTED) == 0.0  # it never saw a 3 labelled
    pseudo, soft = accuracy_on(res.baselines["pseudo"], val, OMITTED), accuracy_on(res.student, val, OMITTED)
    assert pseudo < 0.1 < 0.3 < soft, (pseudo, soft)
