"""Consistent teaching: augment= and mixup= give teacher and student the same view, the cache steps
aside, mixup's KD target is the teacher on the mixed input; the built-in augmentations; bad input."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdnb
from kdnb import KdnbError
from kdnb.engine.distill import Distillation, FrozenTeacher, distill, losses
from kdnb.engine.distill import augment as augmentations


class Recording(nn.Module):
    """A model that records every input it sees, in a class-level list (the private copies record too)."""

    seen: list = []

    def __init__(self, hidden=16):
        super().__init__()
        self.net = kdnb.models.mlp(20, [hidden], 4)

    def forward(self, x):
        type(self).seen.append(x.detach().clone())
        return self.net(x)


class RecordingTeacher(Recording):
    seen: list = []


class RecordingStudent(Recording):
    seen: list = []


def jitter(x):
    return x + 0.5 * torch.randn_like(x)


@pytest.fixture(scope="module")
def setup():
    train, val = kdnb.datasets.load("synthetic", batch_size=32, seed=0, num_samples=192)
    torch.manual_seed(0)
    teacher = kdnb.models.mlp(20, [32], 4)
    kdnb.train(teacher, train, epochs=2, progress=False)
    torch.manual_seed(1)
    return teacher.eval(), kdnb.models.mlp(20, [8], 4), train, val


def test_teacher_and_student_see_the_same_augmented_batch(setup):
    _, _, train, _ = setup
    torch.manual_seed(0)
    teacher, student = RecordingTeacher().eval(), RecordingStudent(4)
    RecordingTeacher.seen.clear(), RecordingStudent.seen.clear()
    result = distill(teacher, student, train, epochs=2, augment=jitter, seed=0)
    # Before training both ran once on the first batch (the checks); the teacher's private copy
    # then ran once on the very tensor the student saw, every step.
    steps = result.history.num_steps
    teacher_steps, student_steps = RecordingTeacher.seen[-steps:], RecordingStudent.seen[-steps:]
    assert steps == 2 * len(train) and len(student_steps) == steps
    for t_in, s_in in zip(teacher_steps, student_steps):
        assert torch.equal(t_in, s_in)
    raw = torch.cat([x for x, _ in train])
    augmented = torch.cat(student_steps[:len(train)])
    assert augmented.shape == raw.shape and not any(torch.equal(a, r) for a, r in zip(augmented, raw))
    assert result.soft_labels == "live teacher (consistent teaching: jitter)"


def test_the_scratch_baseline_sees_the_same_augmentation(setup):
    teacher, student, train, _ = setup
    calls = []

    def counting(x):
        calls.append(len(x))
        return jitter(x)

    result = distill(teacher, student, train, epochs=2, augment=counting, baseline=True)
    assert len(calls) == 1 + result.history.num_steps + result.baseline_history.num_steps  # 1: the entry check
    assert result.baseline_history.num_steps == result.history.num_steps
    assert f"budget: 2 epochs = {2 * len(train)} steps, constant lr, counting; every baseline" in repr(result)


def test_augmentation_turns_the_cache_off_and_forcing_it_is_an_error(setup):
    teacher, student, train, _ = setup
    assert distill(teacher, student, train, epochs=1, augment=jitter, cache=False).soft_labels.startswith(
        "live teacher (consistent teaching")
    for cache in (True, "fp16"):
        for kwargs in ({"augment": jitter}, {"mixup": 0.4}):
            with pytest.raises(KdnbError, match=rf"cache={cache!r} with augment=/mixup=: .* the cache is off"):
                distill(teacher, student, train, epochs=1, cache=cache, **kwargs)


class Squared(nn.Module):
    """A teacher far from linear, so its output on a mixed input differs from the mix of its outputs."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(20, 4)

    def forward(self, x):
        return self.linear(x) ** 2


def test_mixup_kd_target_is_the_teacher_on_the_mixed_input(setup):
    _, student, train, _ = setup
    torch.manual_seed(0)
    teacher = Squared().eval()
    x, y = next(iter(train))
    objective = Distillation(FrozenTeacher(teacher), "kd", temperature=2.0, alpha=0.3, mixup=0.4)
    torch.manual_seed(5)
    out = objective(student, (x, y))
    torch.manual_seed(5)  # the same draw of lambda and the permutation, by hand
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    perm = torch.randperm(len(x))
    mixed = lam * x + (1 - lam) * x[perm]
    s, t = student(mixed), teacher(mixed)
    log_p_s, p_t = F.log_softmax(s / 2.0, 1), F.softmax(t / 2.0, 1)
    kl = 4.0 * (p_t * (p_t.log() - log_p_s)).sum(1).mean()
    ce = lam * F.cross_entropy(s, y) + (1 - lam) * F.cross_entropy(s, y[perm])
    assert torch.allclose(out.loss, 0.3 * ce + 0.7 * kl, atol=1e-5)
    assert torch.allclose(out.terms["kd"], kl, atol=1e-5)
    mixed_outputs = lam * teacher(x) + (1 - lam) * teacher(x[perm])  # what the target is not
    assert (out.terms["kd"] - losses.soft_kl(s, mixed_outputs, 2.0)).abs() > 1e-3  # 100x the tolerance above


def test_pseudo_label_baseline_uses_the_teachers_top1_on_the_same_inputs(setup):
    teacher, student, train, val = setup
    result = distill(teacher, student, train, val, epochs=2, alpha=0.2, baseline=("scratch", "pseudo"))
    pseudo = result.baseline_histories["pseudo"]
    assert pseudo.num_steps == result.history.num_steps and {"ce", "pseudo"} <= set(pseudo.steps)
    assert set(result.accuracy) == {"teacher", "scratch", "pseudo", "distilled"}
    assert "pseudo-label student" in repr(result) and "hard pseudo-labels" in repr(result)
    x, y = next(iter(train))
    s, t = student(x), teacher(x)
    by_hand = 0.2 * F.cross_entropy(s, y) + 0.8 * F.cross_entropy(s, t.argmax(1))
    objective = Distillation(FrozenTeacher(teacher), "pseudo", alpha=0.2)
    assert torch.allclose(objective(student, (x, y)).loss, by_hand, atol=1e-6)
    summary = result.summary(repeats=1, warmup=0).to_text().splitlines()
    assert [line.split()[0] for line in summary[3:7]] == ["teacher", "scratch", "pseudo", "distilled"]


def test_seeds_report_the_spread_of_the_gap_closure(setup):
    teacher, student, train, val = setup
    result = distill(teacher, student, train, val, epochs=1, baseline=("scratch", "pseudo"), seeds=[0, 1, 2])
    assert [run.seed for run in result.seed_runs] == [0, 1, 2]
    single = distill(teacher, student, train, val, epochs=1, baseline=("scratch", "pseudo"), seed=1)
    assert result.seed_runs[1].accuracy == single.accuracy
    text = repr(result)
    if result.gap_closure is not None and all(r.gap_closure is not None for r in result.seed_runs):
        mean, std, low = result.seed_spread()["distilled"]
        assert f"gap closure over seeds 0, 1, 2: {100 * mean:.1f} +- {100 * std:.1f}% (min {100 * low:.1f}%)" in text
        assert "soft vs hard labels" in text


def test_cosine_schedule_is_the_scratch_run_of_kdnb_train_with_cosine(setup):
    teacher, student, train, val = setup
    result = distill(teacher, student, train, val, epochs=3, baseline=True, scheduler="cosine", seed=2)
    by_hand = copy.deepcopy(student)
    kdnb.train(by_hand, train, val, epochs=3, seed=2, progress=False,
               scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3))
    assert all(torch.equal(a, b) for a, b in zip(result.baseline.parameters(), by_hand.parameters()))
    assert "cosine lr" in repr(result)


def test_dkd_with_a_transfer_set_takes_the_teachers_class_as_target(setup):
    teacher, student, train, val = setup
    result = distill(teacher, student, train, val, method="dkd", epochs=1, transfer=torch.randn(64, 20))
    assert result.history.status == "completed" and result.history.num_steps == (160 + 64 + 31) // 32
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    y = torch.tensor([0, -1, 2, -1, 3, 1])
    filled = torch.where(y < 0, t.argmax(1), y)
    assert torch.allclose(losses.dkd(s, t, y, 4.0), losses.dkd(s, t, filled, 4.0))


def test_feature_methods_train_with_augmentation():
    train, val = kdnb.datasets.load("digits", batch_size=64, seed=0, flat=False, num_samples=256)
    torch.manual_seed(0)
    teacher, student = kdnb.models.cnn_bn(10, width=8).eval(), kdnb.models.cnn_bn(10, width=4)
    names = [name for name, m in student.named_modules() if isinstance(m, nn.BatchNorm2d)][:1]
    for method in ("fitnets", "at"):
        result = distill(teacher, student, train, val, method=method, epochs=1, augment="digits",
                         features=[(names[0], names[0])])
        assert result.history.status == "completed" and "consistent teaching" in result.soft_labels


def test_built_in_digits_augmentation_shifts_raw_pixels():
    train, _ = kdnb.datasets.load("digits", batch_size=16, seed=0, flat=False)
    x = next(iter(train))[0]
    assert torch.allclose(augmentations.digits(shift=0, degrees=0, noise=0)(x), x, atol=1e-4)
    mean, std = kdnb.datasets.statistics("digits")
    raw = (x.reshape(len(x), -1) * std + mean).reshape(-1, 8, 8)
    shifted = augmentations.digits(shift=1, degrees=0, noise=0)(x)
    moved = (shifted.reshape(len(x), -1) * std + mean).reshape(-1, 8, 8)
    # Every image is its raw self moved by a whole pixel in each axis (-1, 0 or +1), zeros shifted in,
    # up to the clipping of pixels that are blank in every training image.
    for original, out in zip(raw, moved):
        candidates = [torch.roll(original, (dy, dx), (0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        interior = (slice(2, 6), slice(2, 6))  # away from the border pixels, whose training range is narrow
        assert min(float((c[interior] - out[interior]).abs().max()) for c in candidates) < 1e-3
    assert shifted.shape == x.shape


@pytest.mark.slow
def test_built_in_mnist1d_augmentation_is_the_generators_transforms():
    train, _ = kdnb.datasets.load("mnist1d", batch_size=16, seed=0, flat=False)
    x = next(iter(train))[0]
    assert torch.allclose(augmentations.mnist1d(shift=0, scale=0, shear=0, noise=0)(x), x, atol=1e-4)
    torch.manual_seed(0)
    out = augmentations.mnist1d()(x)
    assert out.shape == x.shape and torch.isfinite(out).all() and not torch.allclose(out, x)
    with pytest.raises(KdnbError, match=r"augment='digits' is for digits inputs of 64 features"):
        augmentations.check(augmentations.digits(), x)


@pytest.mark.parametrize("augment, match", [
    (lambda x: x[:, :10], r"augment changed the input shape from \(32, 20\) to \(32, 10\)"),
    (lambda x: x * float("nan"), r"augment returned NaN or infinite values on the first batch"),
    (3, r"augment should be None, 'digits', 'mnist1d' or a callable"),
    ("digit", r"unknown augmentation 'digit'; did you mean 'digits'\?"),
    (lambda x: x.numpy(), r"augment should return a tensor"),
    (lambda x: 1 / 0, r"augment failed on an input batch of shape \(32, 20\): division by zero"),
])
def test_bad_augmentations_are_one_line_errors(setup, augment, match):
    teacher, student, train, _ = setup
    before = copy.deepcopy(student.state_dict())
    rng = torch.random.get_rng_state()
    with pytest.raises(KdnbError, match=match) as caught:
        distill(teacher, student, train, epochs=1, augment=augment)
    assert "\n" not in str(caught.value) and torch.equal(rng, torch.random.get_rng_state())
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("kwargs, match", [
    ({"seeds": []}, r"seeds should be a non-empty list of integers"),
    ({"seeds": [0, 1.5]}, r"seeds should be a non-empty list of integers"),
    ({"seeds": [True]}, r"seeds should be a non-empty list of integers"),
    ({"seeds": "01"}, r"seeds should be a non-empty list of integers"),
    ({"seeds": [1, 1]}, r"seeds should be distinct"),
    ({"mixup": -1.0}, r"mixup should be the Beta\(a, a\) concentration"),
    ({"baseline": "hard"}, r"baseline should be True, False, 'scratch', 'pseudo'"),
    ({"scheduler": "linear"}, r"scheduler should be None, 'cosine'"),
])
def test_bad_seeds_and_options(setup, kwargs, match):
    teacher, student, train, _ = setup
    with pytest.raises(KdnbError, match=match) as caught:
        distill(teacher, student, train, epochs=1, **kwargs)
    assert "\n" not in str(caught.value)
