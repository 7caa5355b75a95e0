"""Bad input to distill: one-line KdnbErrors that name the fix; teacher and student untouched."""
import pytest
import torch
from torch import nn

import kdnb
from kdnb import KdnbError
from kdnb.engine.distill import FrozenTeacher, distill, kd_objective


@pytest.fixture(scope="module")
def setup():
    train, val = kdnb.datasets.load("synthetic", batch_size=32, seed=0, num_samples=128)
    torch.manual_seed(0)
    return kdnb.models.mlp(20, [16], 4).eval(), kdnb.models.mlp(20, [4], 4), train, val


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, model.training


def raises_one_line(match, call, *models):
    before = [state(m) for m in models]
    with pytest.raises(KdnbError, match=match) as caught:
        call()
    assert "\n" not in str(caught.value)
    for model, (weights, training) in zip(models, before):
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items()) and model.training == training
    return str(caught.value)


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": 0}, r"temperature should be a number > 0"),
    ({"temperature": -2.0}, r"temperature should be a number > 0"),
    ({"alpha": 1.5}, r"alpha should be between 0 and 1 \(the weight of the hard-label CE"),
    ({"alpha": -0.1}, r"alpha should be between 0 and 1"),
    ({"method": "dkd", "beta": -1.0}, r"beta should be a weight >= 0 for method='dkd'"),
    ({"method": "kdd"}, r"unknown method 'kdd'; did you mean 'kd'\? \(known: kd, fitnets, at, dkd\)"),
    ({"method": "hinton"}, r"unknown method 'hinton'; choose from 'kd', 'fitnets', 'at', 'dkd'"),
    ({"cache": "yes"}, r"cache should be 'auto', True, False or 'fp16'"),
    ({"features": [("1", "1")]}, r"features= is used by method 'fitnets' or 'at', not 'kd'"),
    ({"method": "fitnets", "features": ["1"]}, r"features should be a list of \(teacher_layer, student_layer\)"),
    ({"method": "dkd", "mixup": 0.4}, r"mixup does not go with method='dkd'"),
    ({"epochs": 0}, r"epochs should be a positive integer"),
    ({"warmup": 0}, r"warmup should be a number of epochs >= 1"),
])
def test_bad_options(setup, kwargs, match):
    teacher, student, train, _ = setup
    raises_one_line(match, lambda: distill(teacher, student, train, **kwargs), teacher, student)


def test_output_sizes_differ(setup):
    teacher, _, train, _ = setup
    student = kdnb.models.mlp(20, [4], 3)
    raises_one_line(r"teacher outputs 4 classes but student outputs 3; give the student's last layer 4 outputs",
                    lambda: distill(teacher, student, train), teacher, student)


def test_student_is_the_teacher(setup):
    teacher, _, train, _ = setup
    raises_one_line(r"student is the teacher object itself",
                    lambda: distill(teacher, teacher, train), teacher)


def test_unknown_feature_layer_suggests_the_nearest_names(setup):
    teacher, student, train, _ = setup
    message = raises_one_line(r"the student has no module named '22'; did you mean '2'\?",
                              lambda: distill(teacher, student, train, method="fitnets", features=[("2", "22")]),
                              teacher, student)
    assert "student modules with output shapes: 0 (20,), 1 (4,), 2 (4,), 3 (4,)" in message


def test_missing_features_for_a_feature_method(setup):
    teacher, student, train, _ = setup
    raises_one_line(r"method='at' needs features=\[\(teacher_layer, student_layer\)\]",
                    lambda: distill(teacher, student, train, method="at"), teacher, student)


def test_attention_transfer_needs_feature_maps(setup):
    teacher, student, train, _ = setup
    raises_one_line(r"attention transfer needs feature maps \(N, C, \*spatial\) of the same spatial size; "
                    r"teacher '1' gives \(16,\)",
                    lambda: distill(teacher, student, train, method="at", features=[("1", "1")]), teacher, student)


def test_fitnets_cannot_adapt_different_resolutions(setup):
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 1, 12),
                                                                       torch.randint(0, 2, (8,))), batch_size=4)
    teacher = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(48, 2)).eval()
    student = nn.Sequential(nn.Conv1d(1, 2, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(12, 2))
    raises_one_line(r"cannot adapt student '0' \(2, 6\) to teacher '0' \(4, 12\): spatial sizes differ",
                    lambda: distill(teacher, student, train, method="fitnets", features=[("0", "0")]),
                    teacher, student)


def test_an_optimizer_instance_is_refused(setup):
    teacher, student, train, _ = setup
    raises_one_line(r"optimizer should be a factory",
                    lambda: distill(teacher, student, train, optimizer=torch.optim.SGD(student.parameters(), lr=0.1)),
                    teacher, student)


def test_models_and_data_must_be_what_they_say(setup):
    teacher, student, train, _ = setup
    raises_one_line(r"teacher should be a torch.nn.Module, got str", lambda: distill("big", student, train))
    raises_one_line(r"data should be a torch DataLoader", lambda: distill(teacher, student, torch.zeros(4, 20)))
    unlabelled = torch.utils.data.DataLoader(torch.zeros(8, 20), batch_size=4)
    raises_one_line(r"data should yield \(inputs, labels\) batches; pass unlabelled inputs as transfer=",
                    lambda: distill(teacher, student, unlabelled), teacher, student)
    raises_one_line(r"with a transfer set, transfer should be a DataLoader over a map-style dataset",
                    lambda: distill(teacher, student, train, transfer=[1, 2]), teacher, student)


def test_teacher_in_training_mode_is_used_in_eval_mode_with_a_warning(setup):
    _, student, train, _ = setup
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(20, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 4))
    with pytest.warns(UserWarning, match=r"the teacher is in training mode; .* call teacher.eval\(\) to silence"):
        result = distill(teacher, student, train, epochs=1)
    assert result.history.status == "completed"
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    with pytest.warns(UserWarning, match="training mode"):
        frozen = FrozenTeacher(teacher)
    x = next(iter(train))[0]
    assert not frozen.model.training and torch.equal(frozen(x), frozen(x))  # dropout off: deterministic


def test_kd_objective_checks_its_weights(setup):
    teacher = setup[0]
    raises_one_line(r"alpha should be between 0 and 1", lambda: kd_objective(teacher, alpha=2.0), teacher)
