"""The registry of distillation methods: the training step calls the formulas of `losses`, and a new
method is one record that `distill` accepts at once."""
import pytest
import torch
import torch.nn.functional as F

import kdnb
from kdnb import KdnbError
from kdnb.engine.distill import Distillation, FrozenTeacher, distill, losses, methods


@pytest.fixture(scope="module")
def setup():
    train, val = kdnb.datasets.load("synthetic", batch_size=32, seed=0, num_samples=128)
    torch.manual_seed(0)
    return kdnb.models.mlp(20, [16], 4).eval(), kdnb.models.mlp(20, [4], 4), train, val


def test_every_record_names_a_formula_of_losses_with_its_paper():
    assert methods.names() == ("kd", "fitnets", "at", "dkd")
    for record in methods.METHODS.values():
        assert getattr(losses, record.formula.__name__) is record.formula
        assert "=" in record.formula.__doc__ and record.label and record.terms[0] == "ce"
        if not record.baseline:
            assert record.paper.split()[0] in record.formula.__doc__ or record.needs_features


@pytest.mark.parametrize("method", ["kd", "dkd", "pseudo", "scratch"])
def test_the_training_step_is_the_formula(setup, method):
    teacher, student, train, _ = setup
    x, y = next(iter(train))
    objective = Distillation(FrozenTeacher(teacher), method, temperature=3.0, alpha=0.4, beta=2.0, warmup=2)
    out = objective(student, (x, y))
    s, t = student(x), teacher(x)
    expected = {"kd": lambda: losses.kd(s, t, y, 3.0, 0.4),
                "dkd": lambda: F.cross_entropy(s, y) + 0.5 * losses.dkd(s, t, y, 3.0, 0.4, 2.0),
                "pseudo": lambda: losses.pseudo_label(s, t, y, 0.4),
                "scratch": lambda: F.cross_entropy(s, y)}[method]()
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert set(out.terms) == set(methods.get(method).terms)


def test_a_new_method_is_one_record(setup):
    teacher, student, train, _ = setup
    record = methods.Method("soft-only", "soft labels only", "Hinton, Vinyals & Dean 2015", losses.soft_kl,
                            lambda step: losses.soft_kl(step.s, step.t, step.temperature), ("kd",), 0.0, 0.0,
                            "none")
    methods.register(record)
    try:
        result = distill(teacher, student, train, method="soft-only", epochs=1)
        assert result.history.status == "completed" and result.method == "soft-only"
    finally:
        del methods.METHODS["soft-only"]
    with pytest.raises(KdnbError, match=r"unknown method 'soft-only'"):
        distill(teacher, student, train, method="soft-only", epochs=1)
