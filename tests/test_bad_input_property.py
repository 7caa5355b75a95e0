"""A property of kdnb.train (issue 14): whatever values its arguments get, a call either succeeds or raises a
KdnbError, never anything else; and when it raises, the model and the loader are bit-identical to before."""
from __future__ import annotations

import warnings

import torch
from badinput import assert_unchanged, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import kdnb
from kdnb.engine.events import Callback
from kdnb.errors import KdnbError

ANYTHING_ODD = st.sampled_from([None, "abc", "", True, False, [], [1], {}, {"a": 1}, object(), torch.zeros(2)])
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3), ANYTHING_ODD)

ARGUMENTS = {
    "epochs": st.one_of(st.integers(-1, 2), st.floats(-1, 2), ANYTHING_ODD),
    "lr": st.one_of(st.floats(1e-4, 1e-1), NUMBERS, st.sampled_from([1e6, 1e12])),
    "seed": st.one_of(st.integers(-2**70, 2**70), st.floats(), ANYTHING_ODD),
    "grad_clip": st.one_of(st.none(), st.floats(0.1, 10), NUMBERS),
    "amp": st.one_of(st.booleans(), ANYTHING_ODD, st.integers(0, 1)),
    "loss": st.sampled_from([None, "mse", 5, torch.nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss, len,
                             lambda logits, y: logits.sum(-1), lambda logits, y: torch.nn.functional.mse_loss(logits, y),
                             lambda logits, y: (torch.nn.functional.cross_entropy(logits, y), {"ce": 1.0})]),
    "scheduler": st.sampled_from([None, "cosine", 5, lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1), lambda opt: 1,
                                  lambda: None, torch.optim.lr_scheduler.StepLR]),
    "callbacks": st.sampled_from([(), None, 5, [1], "abc", [Callback()], [Callback], (c for c in [Callback()]),
                                  {"a": Callback()}]),
    "optimizer": st.sampled_from([None, "adam", 5, lambda p: torch.optim.SGD(p, lr=0.1), lambda p: 5, torch.optim.Adam,
                                  torch.optim.SGD, lambda: None]),
    "device": st.sampled_from(["cpu", "auto", "gpu0", None, 3, "cuda:7", torch.device("cpu"), "meta"]),
    "progress": st.sampled_from([False, "no", None, 0]),
    "plot": st.sampled_from([False, "yes", "auto", None, 2]),
}


def make_loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 5, generator=g)
    return DataLoader(TensorDataset(x, torch.randint(0, 3, (16,), generator=g)), batch_size=8, shuffle=True,
                      generator=torch.Generator().manual_seed(1))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({}, optional=ARGUMENTS))
def test_train_succeeds_or_raises_a_kdnb_error_and_then_leaves_everything_as_it_was(kwargs):
    torch.manual_seed(0)
    model, data = kdnb.models.mlp(5, [4], 3), make_loader()
    kwargs.setdefault("progress", False)
    kwargs.setdefault("epochs", 1)
    before = snapshot(model, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a diverged run warns; that is a success here
        try:
            history = kdnb.train(model, data, **kwargs)
        except KdnbError as error:
            assert len(str(error).splitlines()) <= 3
            assert_unchanged(before, model, data)
            return
    assert history.status in ("completed", "diverged")
