"""Nothing of the user's changes behind their back (issue 35): every verb leaves the caller's random generators
and loaders' shuffling as they were, on success and on error; an unknown keyword, or a name from another tool,
is one line with its did-you-mean; masks only grow over random calls (property tests, small and fast)."""
from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch.utils.data import DataLoader, TensorDataset

import kdnb
from kdnb.engine.prune.cut.masks import current_masks
from kdnb.errors import KdnbError

QUIET = {"progress": False, "plot": False}


def loader(seed: int = 0, n: int = 48, shuffle: bool = True) -> DataLoader:
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(seed))
    return DataLoader(TensorDataset(x, x[:, :3].argmax(1)), batch_size=16, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed + 1) if shuffle else None)


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))


def rng_states(*loaders: DataLoader) -> tuple:
    return (random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state(),
            [d.generator.get_state() for d in loaders if d.generator is not None])


def same(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2]) and len(a[3]) == len(b[3]) and \
        all(torch.equal(x, y) for x, y in zip(a[3], b[3]))


VERBS = {  # (model, teacher, data, val): the models are built before the RNGs are read (building draws from them)
    "train": lambda m, t, d, v: kdnb.train(m, d, val=v, epochs=1, **QUIET),
    "distill": lambda m, t, d, v: kdnb.distill(t, m, d, val=v, epochs=1, baseline=True, **QUIET),
    "prune": lambda m, t, d, v: kdnb.prune(m, 0.5, data=d, val=v, finetune=1, **QUIET),
    "prune structured": lambda m, t, d, v: kdnb.prune(m, 0.3, structured=True, data=d, **QUIET),
    "sensitivity": lambda m, t, d, v: kdnb.sensitivity(m, v, sparsities=[0.5], **QUIET),
    "evaluate": lambda m, t, d, v: kdnb.evaluate(m, v),
    "measure": lambda m, t, d, v: kdnb.measure(m, v, repeats=1, warmup=0),
}


@pytest.mark.parametrize("verb", list(VERBS))
def test_a_verb_leaves_the_callers_rngs_and_loaders_as_they_were(verb):
    """After kdnb.train or kdnb.distill the user's next hand-written epoch saw other batches (the loader's
    generator was left in a state fixed by kdnb's seed); now every verb puts it back, with the global RNGs."""
    data, val, model, teacher = loader(0), loader(5), net(), net(1)
    for _ in data:  # the user's own epoch first: the generator is somewhere of theirs
        pass
    torch.randn(3), np.random.rand(), random.random()
    before = rng_states(data, val)
    VERBS[verb](model, teacher, data, val)
    assert same(rng_states(data, val), before)


@pytest.mark.parametrize("verb", ["train", "distill", "prune"])
def test_a_failing_verb_leaves_them_too(verb):
    data, val, model, teacher = loader(0), loader(5), net(), net(1)
    before = rng_states(data, val)
    with pytest.raises(KdnbError):
        {"train": lambda: kdnb.train(model, data, lr=-1.0, **QUIET),
         "distill": lambda: kdnb.distill(teacher, model, data, temperature=0.0, **QUIET),
         "prune": lambda: kdnb.prune(model, 1.5, data=data, **QUIET)}[verb]()
    assert same(rng_states(data, val), before)


def test_a_seeded_run_is_still_reproducible():
    runs = [kdnb.train(net(), loader(0), epochs=2, seed=3, **QUIET)["loss"] for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize(("call", "name", "meant"), [
    (lambda x: kdnb.prune(net(), 0.5, structured=True, example_inputs=x), "example_inputs", "example"),
    (lambda x: kdnb.prune(net(), pruning_ratio=0.5), "pruning_ratio", "sparsity"),
    (lambda x: kdnb.prune(net(), 0.5, importance="l1"), "importance", "criterion"),
    (lambda x: kdnb.prune(net(), 0.5, max_pruning_ratio=0.5), "max_pruning_ratio", "max_layer_sparsity"),
    (lambda x: kdnb.distill(net(1), net(), loader(), T=4.0), "T", "temperature"),
    (lambda x: kdnb.distill(net(1), net(), loader(), kd_ratio=0.5), "kd_ratio", "alpha"),
    (lambda x: kdnb.train(net(), loader(), num_epochs=1), "num_epochs", "epochs"),
    (lambda x: kdnb.train(net(), loader(), learning_rate=0.1), "learning_rate", "lr"),
    (lambda x: kdnb.train(net(), loader(), epohcs=1), "epohcs", "epochs"),
    (lambda x: kdnb.sensitivity(net(), loader(), sparsites=[0.5]), "sparsites", "sparsities"),
    (lambda x: kdnb.measure(net(), x, repeat=2), "repeat", "repeats"),
    (lambda x: kdnb.evaluate(net(), dataloader=loader()), "dataloader", "data"),
    (lambda x: kdnb.save(net(), "never.kdnb", meta={}), "meta", "metadata"),
    (lambda x: kdnb.load("never.kdnb", modle=net()), "modle", "model"),
])
def test_an_unknown_keyword_is_one_line_with_its_did_you_mean(call, name, meant):
    """Was a raw TypeError ("prune() got an unexpected keyword argument 'example_inputs'")."""
    with pytest.raises(KdnbError) as caught:
        call(torch.randn(2, 6))
    message = str(caught.value)
    assert f"unknown keyword argument {name!r}; did you mean {meant!r}?" in message and "\n" not in message


def test_the_magics_share_the_did_you_mean():
    from kdnb.errors import suggest

    assert suggest("example_inputs", ["example", "data"]) == "did you mean 'example'?"
    assert suggest("temp", ["temperature", "alpha"]) == "did you mean 'temperature'?"
    assert suggest("zzz", ["a", "b"]) == "choose from 'a', 'b'"


# ---- property tests: random calls of the verbs (few and small, so they stay fast) ----

FAST = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(verb=st.sampled_from(list(VERBS)), seed=st.integers(0, 2**16), fails=st.booleans())
def test_property_no_verb_moves_the_callers_rngs(verb, seed, fails):
    data, val, model, teacher = loader(seed % 7), loader(seed % 5 + 10), net(seed), net(seed + 1)
    before = rng_states(data, val)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            VERBS[verb](model if not fails else "not a model", teacher, data, val)
        except KdnbError:
            assert fails
    assert same(rng_states(data, val), before)


@FAST
@given(amounts=st.tuples(st.floats(0.0, 0.6), st.floats(0.0, 0.6)), bias=st.booleans(), extra=st.floats(0.0, 0.3),
       options=st.sampled_from([{"criterion": "l1", "finetune": 1}, {"criterion": "auto"},
                                {"criterion": "obs"}, {"criterion": "random", "scope": "local", "finetune": 1},
                                {"criterion": "taylor", "reconstruct": False, "finetune": 1, "distill": True}]))
def test_property_masks_only_grow(amounts, bias, extra, options):
    model = net(3)
    torch_prune.l1_unstructured(model[0], "weight", amount=amounts[0])
    torch_prune.random_unstructured(model[2], "weight", amount=amounts[1])
    if bias:
        torch_prune.l1_unstructured(model[2], "bias", amount=1)
    zeroed = {name: ~mask for name, mask in current_masks(model).items()}
    total = 6 * 12 + 12 * 3
    start = (int(zeroed["0.weight"].sum()) + int(zeroed["2.weight"].sum())) / total
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = kdnb.prune(model, min(start + extra, 0.9), data=loader(), **options, **QUIET)
    assert result.start_sparsity == pytest.approx(start)
    for name, where in zeroed.items():
        module_name, _, attr = name.rpartition(".")
        assert not bool((getattr(result.model.get_submodule(module_name), attr).detach()[where] != 0).any()), name
