"""distill end to end: agreement rises, the user's models stay as they were, the baseline, the result."""
import copy

import pytest
import torch
from torch import nn

import kdnb
from kdnb.engine.distill import Distillation, FrozenTeacher, distill, kd_objective, losses
from kdnb.engine.distill.agreement import Agreement
from kdnb.engine.events import Callback
from kdnb.engine.loop import fit


@pytest.fixture(scope="module")
def digits():
    train, val = kdnb.datasets.load("digits", batch_size=64, seed=0)
    torch.manual_seed(0)
    teacher = kdnb.models.mlp(64, [128], 10)
    kdnb.train(teacher, train, epochs=3, progress=False)
    return teacher.eval(), train, val


def small_student(seed=1):
    torch.manual_seed(seed)
    return kdnb.models.mlp(64, [12], 10)


def snapshot(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()}, model.training,
            [p.requires_grad for p in model.parameters()], [p.device for p in model.parameters()])


def unchanged(model, before):
    after = snapshot(model)
    return (all(torch.equal(before[0][k], after[0][k]) for k in before[0]) and before[1:] == after[1:])


class Recorder(Callback):
    def __init__(self):
        self.titles, self.term_names = [], set()

    def on_run_start(self, state):
        self.titles.append(state.title)

    def on_step_end(self, state):
        self.term_names.update(state.terms)


def test_agreement_with_the_teacher_rises(digits):
    teacher, train, val = digits
    student = small_student()
    untrained = Agreement(FrozenTeacher(teacher), val)(student, val)["val_agreement"]
    result = distill(teacher, student, train, val, epochs=3, alpha=0.1, lr=1e-2)
    agreement = result.history["val_agreement"]
    assert len(agreement) == 3 and untrained < agreement[0] < agreement[-1]
    assert untrained < 0.3 and agreement[-1] > 0.8


def test_user_models_stay_bit_identical_and_teacher_is_never_trained(digits):
    teacher, train, val = digits
    teacher.train()  # the user forgot .eval(): used in eval mode, with a warning that says so
    student = small_student()
    before_t, before_s = snapshot(teacher), snapshot(student)
    try:
        with pytest.warns(UserWarning, match="teacher is in training mode; kdnb uses a copy of it in eval mode"):
            result = distill(teacher, student, train, val, epochs=1, baseline=True)
        assert unchanged(teacher, before_t) and unchanged(student, before_s)
        assert result.student is not student and result.baseline is not student and result.teacher is teacher
    finally:
        teacher.eval()


def test_baseline_is_the_same_student_trained_from_the_same_weights_on_hard_labels(digits):
    teacher, train, val = digits
    student = small_student()
    result = distill(teacher, student, train, val, epochs=2, baseline=True, seed=3)
    by_hand = copy.deepcopy(student)
    kdnb.train(by_hand, train, val, epochs=2, seed=3, progress=False)
    for a, b in zip(result.baseline.parameters(), by_hand.parameters()):
        assert torch.equal(a, b)
    assert result.baseline_history["val_acc"] == result.baseline_history.epochs["val_acc"]
    assert len(result.baseline_history["val_agreement"]) == 2


def test_events_carry_each_loss_term_and_runs_are_titled(digits):
    teacher, train, val = digits
    recorder = Recorder()
    result = distill(teacher, small_student(), train, val, epochs=1, baseline=True, callbacks=[recorder])
    assert recorder.titles == ["distill", "scratch"]
    assert {"loss", "ce", "kd"} <= recorder.term_names
    steps = result.history.steps
    assert len(steps["ce"]) == len(steps["kd"]) == len(steps["loss"]) == len(train)
    assert {"train_ce", "train_kd", "val_acc", "val_agreement"} <= set(result.history.epochs)


def test_result_prints_deterministically_with_gap_closure(digits):
    teacher, train, val = digits
    result = distill(teacher, small_student(), train, val, epochs=2, baseline=True)
    text = repr(result)
    assert text == repr(result) and "0x" not in text and "\n" in text
    assert text.splitlines()[0] == ("DistillResult: method='kd', T=4, alpha=0.5, epochs=2, cached soft labels, "
                                    "status='completed'")
    acc = result.accuracy
    assert acc["teacher"] == pytest.approx(kdnb.engine.evaluate.evaluate(teacher, val)["accuracy"])
    if result.gap_closure is not None:
        expected = (acc["distilled"] - acc["scratch"]) / (acc["teacher"] - acc["scratch"])
        assert result.gap_closure == pytest.approx(expected)
        assert f"gap closure {100 * expected:.1f}%" in text
    assert "<table>" in result._repr_html_()
    summary = result.summary(repeats=2, warmup=0).to_text()
    lines = summary.splitlines()
    assert [line.split()[0] for line in lines[3:6]] == ["teacher", "scratch", "distilled"]
    assert lines[-1].startswith("latency") and "latency" not in "\n".join(lines[:-1])


def test_without_baseline_the_summary_says_how_to_get_one(digits):
    teacher, train, val = digits
    result = distill(teacher, small_student(), train, val, epochs=1)
    assert result.gap_closure is None and result.baseline is None
    assert "run with baseline=True" in repr(result)


def test_dkd_ramps_up_over_the_warmup(digits):
    teacher, train, val = digits
    result = distill(teacher, small_student(), train, val, method="dkd", epochs=2, warmup=2)
    assert {"ce", "tckd", "nckd"} <= set(result.history.steps)
    objective = Distillation(FrozenTeacher(teacher), "dkd", 4.0, alpha=1.0, beta=8.0, warmup=4)
    x, y = next(iter(train))
    student = small_student()
    s, t = student(x), teacher(x)
    for epoch, ramp in ((0, 0.25), (1, 0.5), (5, 1.0)):
        objective.epoch = epoch
        expected = torch.nn.functional.cross_entropy(s, y) + ramp * losses.dkd(s, t, y, 4.0, 1.0, 8.0)
        assert torch.allclose(objective(student, (x, y)).loss, expected, atol=1e-5)


def test_kd_objective_plugs_into_fit(digits):
    teacher, train, val = digits
    before = snapshot(teacher)
    student = small_student()
    history = fit(student, train, val, epochs=1, objective=kd_objective(teacher, temperature=2.0, alpha=0.2))
    assert {"ce", "kd"} <= set(history.steps) and history.status == "completed"
    assert unchanged(teacher, before)


def cnn(width):
    return nn.Sequential(nn.Conv1d(1, width, 3, padding=1), nn.ReLU(), nn.Conv1d(width, width, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(width * 20, 4))


@pytest.fixture(scope="module")
def signals():
    train, val = kdnb.datasets.load("synthetic", batch_size=32, seed=0, num_samples=256)
    as_signal = lambda loader, **kw: torch.utils.data.DataLoader(  # noqa: E731
        torch.utils.data.TensorDataset(loader.dataset.tensors[0][:, None, :], loader.dataset.tensors[1]), 32, **kw)
    torch.manual_seed(0)
    teacher = cnn(8)
    train = as_signal(train, shuffle=True, generator=torch.Generator())
    kdnb.train(teacher, train, epochs=1, progress=False)
    return teacher.eval(), train, as_signal(val)


@pytest.mark.parametrize("method, term", [("fitnets", "hint"), ("at", "at")])
def test_feature_methods_tap_layers_by_name(signals, method, term):
    teacher, train, val = signals
    torch.manual_seed(1)
    student = cnn(3)
    result = distill(teacher, student, train, val, method=method, epochs=2, features=[("3", "3"), ("1", "1")])
    assert term in result.history.steps and result.history.status == "completed"
    assert result.history[f"train_{term}"][-1] < result.history[f"train_{term}"][0]
    assert result.soft_labels.startswith("live teacher (feature methods (fitnets, cosine, at) read the teacher's features")
    assert not any(m._forward_hooks for m in result.student.modules())  # the taps are gone


def test_fitnets_adapter_is_a_1x1_conv_and_trains(signals):
    teacher, train, _ = signals
    from kdnb.engine.distill import hooks

    adapters = hooks.plan_features(teacher, cnn(3), next(iter(train))[0][:2], [("3", "3"), ("4", "4")], "fitnets")
    assert isinstance(adapters[0], nn.Conv1d) and adapters[0].kernel_size == (1,)
    assert (adapters[0].in_channels, adapters[0].out_channels) == (3, 8)
    assert hooks.adapter((2, 8), (2, 8)) is None and isinstance(hooks.adapter((2, 3), (2, 8)), nn.Linear)
    assert isinstance(hooks.adapter((2, 3, 4, 4), (2, 8, 4, 4)), nn.Conv2d)


def test_plot_draws_losses_accuracy_and_agreement(digits):
    teacher, train, val = digits
    result = distill(teacher, small_student(), train, val, epochs=2, baseline=True)
    figure = result.plot()
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["loss terms (distill)", "val accuracy", "agreement with the teacher"]
    labels = [line.get_label() for line in figure.axes[1].get_lines()]
    assert labels == ["teacher", "scratch", "distilled"]


@pytest.mark.cuda
def test_distill_on_the_gpu_leaves_the_user_models_on_the_cpu(digits):
    teacher, train, val = digits
    student = small_student()
    before_t, before_s = snapshot(teacher), snapshot(student)
    for cache in (True, False):
        result = distill(teacher, student, train, val, epochs=3, device="cuda", amp=True, cache=cache, baseline=True)
        assert next(result.student.parameters()).is_cuda and result.history.status == "completed"
        assert result.history["val_agreement"][-1] > 0.3
    assert unchanged(teacher, before_t) and unchanged(student, before_s)


def test_one_temperature_check_for_distill_prune_and_the_explorer():
    """distill, prune's fine-tuning by distillation and the temperature explorer refuse a bad T with the
    same one line (one validator, kdnb.engine.checks.check_temperature)."""
    from kdnb.errors import KdnbError
    from kdnb.widgets.temperature import TemperatureExplorer

    train_loader, _ = kdnb.datasets.load("digits", batch_size=64, seed=0)
    teacher, student = kdnb.models.mlp(64, [16], 10), kdnb.models.mlp(64, [8], 10)
    x = next(iter(train_loader))[0][:4]
    messages = set()
    for call in (lambda: kdnb.distill(teacher, student, train_loader, temperature=-1.0, progress=False, plot=False),
                 lambda: kdnb.prune(teacher, 0.5, data=train_loader, finetune=1, distill=True, temperature=-1.0,
                                    progress=False, plot=False),
                 lambda: TemperatureExplorer(teacher, x, temperature=-1.0)):
        with pytest.raises(KdnbError) as caught:
            call()
        messages.add(str(caught.value))
    assert messages == {"temperature should be a number > 0 (soft labels are softmax(logits / T)), got -1.0; "
                        "pass e.g. temperature=4.0"}


def test_distill_options_are_one_frozen_record():
    """distill parses its keywords once into DistillOptions (frozen, every default resolved)."""
    import dataclasses

    from kdnb.engine.distill.options import DistillOptions, parse
    from kdnb.engine.loop import Settings

    train_loader, _ = kdnb.datasets.load("digits", batch_size=64, seed=0)
    teacher, student = kdnb.models.mlp(64, [16], 10), kdnb.models.mlp(64, [8], 10)
    opts = parse(teacher, student, train_loader, None, method="dkd", temperature=4, alpha=None, beta=None, epochs=20,
                 baseline=True, cache="auto", transfer=None, features=None, warmup=None, augment=None, mixup=0.0,
                 seeds=None, settings=Settings(device="cpu"))
    assert isinstance(opts, DistillOptions) and (opts.alpha, opts.beta, opts.warmup) == (1.0, 8.0, 2)
    assert opts.baselines == ("scratch",) and opts.device.type == "cpu" and opts.temperature == 4.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.temperature = 2.0  # type: ignore[misc]
