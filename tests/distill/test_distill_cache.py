"""The soft-label cache: same losses as the live teacher, computed once, stale-label warning, transfer set."""
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import kdnb
from kdnb.engine.distill import Distillation, FrozenTeacher, cache, distill, losses


class Counting(nn.Module):
    """A teacher that counts its forward passes (in a class attribute, so the private copy counts too)."""

    calls = 0

    def __init__(self):
        super().__init__()
        self.net = kdnb.models.mlp(20, [32], 4)

    def forward(self, x):
        Counting.calls += 1
        return self.net(x)


@pytest.fixture(scope="module")
def setup():
    train, val = kdnb.datasets.load("synthetic", batch_size=32, seed=0, num_samples=320)
    torch.manual_seed(0)
    teacher = Counting()
    kdnb.train(teacher, train, epochs=2, progress=False)
    teacher.eval()
    torch.manual_seed(1)
    return teacher, kdnb.models.mlp(20, [8], 4), train, val


class RandomJitter:
    """A random augmentation; the name is what `cache.random_transforms` recognises."""

    def __call__(self, x):
        return x + 0.1 * torch.randn_like(x)


class Augmented(Dataset):
    def __init__(self, base, transform=None, noisy=False):
        self.base, self.transform, self.noisy = base, transform, noisy

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        x, y = self.base[index]
        if self.transform is not None:
            x = self.transform(x)
        if self.noisy:  # randomness without a recognisable transform object
            x = x + 0.1 * torch.randn_like(x)
        return x, y


def test_cached_and_live_runs_give_identical_losses(setup):
    teacher, student, train, val = setup
    cached = distill(teacher, student, train, val, epochs=2, cache=True)
    live = distill(teacher, student, train, val, epochs=2, cache=False)
    assert cached.soft_labels == "cached soft labels" and live.soft_labels.startswith("live teacher")
    for term in ("loss", "ce", "kd"):
        assert torch.allclose(torch.tensor(cached.history.steps[term]), torch.tensor(live.history.steps[term]),
                              rtol=1e-5, atol=1e-6), term
    for a, b in zip(cached.student.parameters(), live.student.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def test_the_teacher_labels_each_sample_once(setup):
    teacher, student, train, _ = setup
    counts = {}
    for epochs in (1, 3):
        Counting.calls = 0
        distill(teacher, student, train, epochs=epochs, cache="auto")
        counts[epochs] = Counting.calls
    assert counts[1] == counts[3] <= len(train) + 2  # one pass over the data, plus the one-batch check
    Counting.calls = 0
    distill(teacher, student, train, epochs=3, cache=False)
    assert Counting.calls >= 3 * len(train)


def test_fp16_cache_is_close_to_float32(setup):
    teacher, student, train, _ = setup
    half = distill(teacher, student, train, epochs=1, cache="fp16")
    full = distill(teacher, student, train, epochs=1, cache=True)
    assert "float16" in half.soft_labels
    assert np.allclose(half.history.steps["kd"], full.history.steps["kd"], rtol=1e-2, atol=1e-3)


def test_random_transforms_are_detected_and_get_a_live_teacher(setup):
    teacher, student, train, _ = setup
    augmented = DataLoader(Augmented(train.dataset, transform=RandomJitter()), batch_size=32, shuffle=True)
    assert cache.random_transforms(augmented.dataset) == ["RandomJitter"]
    result = distill(teacher, student, augmented, epochs=1)
    assert result.soft_labels == "live teacher (randomly augmented data: random transform RandomJitter)"


def test_randomness_inside_getitem_is_detected_without_touching_the_rngs(setup):
    _, _, train, _ = setup
    noisy = DataLoader(Augmented(train.dataset, noisy=True), batch_size=32)
    before = (torch.random.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    assert cache.augmentation(noisy) == "reading the same sample twice gave different inputs"
    assert torch.equal(before[0], torch.random.get_rng_state()) and before[1] == random.getstate()
    assert np.array_equal(before[2], np.random.get_state()[1])
    assert cache.augmentation(train) is None


def test_forcing_the_cache_on_augmented_data_warns_that_labels_go_stale(setup):
    teacher, student, train, _ = setup
    augmented = DataLoader(Augmented(train.dataset, transform=RandomJitter()), batch_size=32, shuffle=True)
    with pytest.warns(UserWarning, match="cached soft labels go stale: random transform RandomJitter"):
        result = distill(teacher, student, augmented, epochs=1, cache=True)
    assert "stale" in result.soft_labels


def test_no_warning_when_the_cache_is_safe(setup):
    teacher, student, train, _ = setup
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        distill(teacher, student, train, epochs=1, cache=True)


def test_transfer_set_is_shuffled_into_the_training_data(setup):
    teacher, student, train, val = setup
    extra = torch.randn(96, 20)
    runs = [distill(teacher, student, train, val, epochs=1, transfer=extra, cache=mode) for mode in (True, False)]
    for result in runs:
        assert result.history.num_steps == (len(train.dataset) + 96 + 31) // 32
    assert np.allclose(runs[0].history.steps["loss"], runs[1].history.steps["loss"], rtol=1e-5, atol=1e-6)
    loader = kdnb.datasets.transfer_set("synthetic", num_samples=64, batch_size=32)
    result = distill(teacher, student, train, epochs=1, transfer=loader)
    assert result.history.num_steps == (len(train.dataset) + 64 + 31) // 32


def test_custom_collate_cannot_be_cached(setup):
    teacher, student, train, _ = setup
    custom = DataLoader(TensorDataset(*train.dataset.tensors), batch_size=32, collate_fn=lambda b: tuple(
        torch.stack(items) for items in zip(*b)))
    assert distill(teacher, student, custom, epochs=1).soft_labels == \
        "live teacher (the DataLoader has its own collate_fn)"
    with pytest.raises(kdnb.KdnbError, match="cache=True is not possible here"):
        distill(teacher, student, custom, epochs=1, cache=True)


def test_transfer_inputs_enter_the_soft_term_but_not_ce(setup):
    teacher, student, _, _ = setup
    objective = Distillation(FrozenTeacher(teacher), "kd", temperature=4.0, alpha=0.3, unlabelled=True)
    x, y = torch.randn(6, 20), torch.tensor([0, 1, -1, -1, 2, -1])
    out = objective(student, (x, y))
    s, t = student(x), teacher(x)
    labelled = y >= 0
    expected = 0.3 * F.cross_entropy(s[labelled], y[labelled]) + 0.7 * losses.soft_kl(s, t, 4.0)
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert torch.equal(out.targets, y[labelled]) and out.logits.shape == (3, 4)


def test_random_transforms_are_found_inside_compositions_and_wrappers():
    class Compose:  # the shape of torchvision.transforms.Compose
        def __init__(self, transforms):
            self.transforms = transforms

    class RandomCrop:
        pass

    inner = Augmented(torch.zeros(2, 3), transform=Compose([RandomJitter(), lambda x: x, RandomCrop()]))
    wrapped = torch.utils.data.ConcatDataset([TensorDataset(torch.zeros(2, 3)), inner])
    assert cache.random_transforms(wrapped) == ["RandomJitter", "RandomCrop"]
    assert cache.random_transforms(TensorDataset(torch.zeros(2, 3))) == []
