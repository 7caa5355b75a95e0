"""Batches and outputs as people's models have them (kdnb.engine.batches), through every verb: several inputs,
mapping batches, tuple and mapping outputs, the inputs=/logits= readers, and the one-line refusals."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import kdnb
from kdnb import KdnbError
from kdnb.engine import batches


class TwoInputs(nn.Module):
    """forward(x1, x2) -> (logits, features): two positional inputs, a tuple out."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.a, self.b = nn.Linear(6, hidden), nn.Linear(4, hidden)
        self.head = nn.Linear(hidden, 3)

    def forward(self, x1, x2):
        features = torch.relu(self.a(x1) + self.b(x2))
        return self.head(features), features


class KeywordInputs(nn.Module):
    """forward(*, pixels, mask) -> {"logits": ..., "hidden": ...}: keyword inputs, a mapping out."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.body, self.head = nn.Linear(6, hidden), nn.Linear(hidden, 3)

    def forward(self, *, pixels, mask):
        hidden = torch.relu(self.body(pixels * mask))
        return {"hidden": hidden, "logits": self.head(hidden)}


def two_input_loader(n: int = 48) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(n, 6, generator=g), torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x1, x2, (x1[:, 0] > 0).long() + (x2[:, 0] > 0).long()), batch_size=16)


class Pixels(Dataset):
    def __init__(self, n: int = 48, labels: str | None = "labels"):
        g = torch.Generator().manual_seed(1)
        self.x, self.labels = torch.randn(n, 6, generator=g), labels

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        item = {"pixels": self.x[i], "mask": torch.ones(6)}
        if self.labels:
            item[self.labels] = int(self.x[i, 0] > 0) + int(self.x[i, 1] > 0)
        return item


def quiet(**kwargs):
    return {"progress": False, "plot": False, **kwargs}


def test_split_batch_reads_each_form():
    x, y = torch.randn(4, 6), torch.arange(4)
    assert batches.split_batch(x) == ((x,), {}, None)
    args, kwargs, labels = batches.split_batch((x, x, y))
    assert len(args) == 2 and kwargs == {} and labels is y
    args, kwargs, labels = batches.split_batch({"input_ids": x, "attention_mask": x, "labels": y})
    assert args == () and set(kwargs) == {"input_ids", "attention_mask"} and labels is y
    with pytest.raises(TypeError):
        batches.split_batch(3)


def test_logits_of_takes_the_documented_part_and_says_once(monkeypatch):
    monkeypatch.setattr(batches, "_SAID", set())  # a session that has seen no output yet
    logits = torch.randn(2, 3)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert batches.logits_of((logits, torch.zeros(2))) is logits
        assert batches.logits_of((logits, torch.zeros(2))) is logits
        assert batches.logits_of({"hidden": torch.zeros(2), "logits": logits}) is logits
    notices = [str(w.message) for w in seen if issubclass(w.category, batches.LogitsNotice)]
    assert len(notices) == 2 and "item 0" in notices[0] and "'logits' key" in notices[1]


@pytest.mark.parametrize("make_model, make_data", [(TwoInputs, two_input_loader),
                                                   (KeywordInputs, lambda: DataLoader(Pixels(), batch_size=16))],
                         ids=["tuple-batches-tuple-outputs", "mapping-batches-mapping-outputs"])
def test_every_verb_takes_the_model_and_its_batches_as_they_are(make_model, make_data):
    torch.manual_seed(0)
    data, teacher, student = make_data(), make_model(32), make_model(8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", batches.LogitsNotice)
        history = kdnb.train(teacher, data, val=data, epochs=2, **quiet())
        assert history.status == "completed" and 0 <= history.last("val_acc") <= 1
        scores = kdnb.evaluate(teacher, data)
        assert set(scores) == {"loss", "accuracy"}
        distilled = kdnb.distill(teacher.eval(), student, data, val=data, epochs=1, baseline=True, **quiet())
        assert distilled.history.status == "completed" and distilled.history.last("val_agreement") is not None
        pruned = kdnb.prune(teacher, 0.5, data=data, val=data, criterion="taylor", finetune=1, **quiet())
        assert pruned.sparsity == pytest.approx(0.5, abs=0.02)
        measured = kdnb.measure(teacher, data, repeats=2, warmup=0)
        assert measured.accuracy == pytest.approx(scores["accuracy"]) and measured.macs > 0
        example = batches.as_example(*batches.inputs_of(next(iter(data))))
        assert kdnb.measure(teacher, example, repeats=2, warmup=0).batch_size == 16
        table = kdnb.compare({"teacher": teacher, "student": distilled.student}, data, repeats=2, warmup=0)
        assert table.rows[1]["params_x"] > 1
        assert kdnb.sensitivity(teacher, data, sparsities=(0.5,), **quiet()).accuracy


def test_inputs_and_logits_read_what_the_defaults_do_not():
    class Named(Dataset):
        def __len__(self):
            return 32

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            x = torch.randn(6, generator=g)
            return {"image": x, "target": int(x[0] > 0)}

    class Scores(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 2)

        def forward(self, image):
            return {"embedding": image, "scores": self.fc(image)}  # the first tensor is not the logits

    data, model = DataLoader(Named(), batch_size=8), Scores()
    readers = {"inputs": lambda b: ((b["image"],), {}, b["target"]), "logits": lambda out: out["scores"]}
    assert kdnb.train(model, data, epochs=1, **quiet(**readers)).status == "completed"
    assert kdnb.evaluate(model, data, **readers)["accuracy"] == kdnb.measure(model, data, repeats=2, warmup=0,
                                                                             **readers).accuracy
    with pytest.raises(KdnbError, match="inputs should be None or a function"):
        kdnb.evaluate(model, data, inputs="image")


def test_a_mapping_batch_without_labels_names_the_key():
    data = DataLoader(Pixels(labels=None), batch_size=16)
    for call in (lambda: kdnb.train(KeywordInputs(), data, **quiet()),
                 lambda: kdnb.distill(KeywordInputs(), KeywordInputs(), data, **quiet()),
                 lambda: kdnb.prune(KeywordInputs(), 0.5, data=data, criterion="taylor", **quiet())):
        with pytest.raises(KdnbError, match="no 'labels' key") as error:
            call()
        assert "\n" not in str(error.value) and "pixels" in str(error.value)


def test_an_output_without_logits_names_the_argument_to_pass():
    class Words(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x1, x2):
            return {"label": "positive", "score": float(self.fc(x1).sum())}

    for call in (lambda: kdnb.train(Words(), two_input_loader(), **quiet()),
                 lambda: kdnb.evaluate(Words(), two_input_loader()),
                 lambda: kdnb.measure(Words(), two_input_loader(), repeats=2, warmup=0)):
        with pytest.raises(KdnbError, match=r"logits=lambda output") as error:
            call()
        assert "\n" not in str(error.value)


def test_a_registered_criterion_prunes_and_a_registered_method_distils():
    from kdnb.engine.distill import losses, methods
    from kdnb.engine.prune.score import criteria

    squared = kdnb.Criterion(name="squared", formula=lambda weight: weight.pow(2), label="squared", colour="tab:red")
    kdnb.register_criterion(squared)
    soft = kdnb.Method("soft_only", "soft labels only", "Hinton, Vinyals & Dean 2015", losses.soft_kl,
                       lambda step: losses.soft_kl(step.s, step.t, step.temperature), ("kd",), 0.0, 0.0, "none")
    kdnb.register_method(soft)
    try:
        data = two_input_loader()
        model = TwoInputs()
        pruned = kdnb.prune(model, 0.5, criterion="squared", **quiet())
        l1 = kdnb.prune(model, 0.5, criterion="l1", **quiet())  # |w| and w^2 rank alike
        assert all(torch.equal(pruned.masks[name], l1.masks[name]) for name in l1.masks)
        assert kdnb.distill(TwoInputs(), TwoInputs(8), data, method="soft_only", epochs=1, **quiet()).method == \
            "soft_only"
        with pytest.raises(KdnbError, match="registered already"):
            kdnb.register_criterion(squared)
    finally:
        del criteria.REGISTRY["squared"], methods.METHODS["soft_only"]


def test_the_explorers_take_mapping_batches_and_mapping_outputs():
    pytest.importorskip("ipywidgets")
    from kdnb.widgets import SparsityExplorer, TemperatureExplorer

    torch.manual_seed(0)
    model, data = KeywordInputs(), DataLoader(Pixels(), batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", batches.LogitsNotice)
        kdnb.train(model, data, epochs=2, **quiet())
        explorer = SparsityExplorer(model, data, data=data, namespace={})
        explorer.slider.value = 0.8
        assert explorer.numbers["sparsity"] == 0.8 and explorer.numbers["nonzero"] < explorer.dense["nonzero"]
        explorer.criterion.value = "taylor"
        assert ("taylor", False) in explorer.curves
        temperature = TemperatureExplorer(model, data, max_samples=10)
        assert len(temperature.logits) == 10 and temperature.labels is not None
        assert temperature.show(3, 8.0).startswith(f"sample 3 (class {int(temperature.labels[3])}), T = 8.0")


def test_many_small_mapping_batches_join_for_the_streamed_calibration():
    first = {"pixels": torch.ones(2, 6), "mask": torch.zeros(2, 6)}
    joined = batches.join_examples([first, first, first])
    assert joined["pixels"].shape == (6, 6) and joined["mask"].shape == (6, 6)
    assert batches.join_examples([torch.ones(2, 3), torch.ones(2, 4)]) is None  # shapes differ after the batch
    data = DataLoader(Pixels(), batch_size=4)  # 12 batches: more than the calibration's threads
    pruned = kdnb.prune(KeywordInputs(), 0.5, data=data, **quiet())  # the default re-solves on them
    assert pruned.reconstructed and pruned.sparsity == pytest.approx(0.5, abs=0.02)
