"""The live chart, the static history figure and the explorers, driven by setting values (no browser)."""
from __future__ import annotations

import base64
import math
import re
import sys

import pytest
import torch
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from torch.utils.data import DataLoader, TensorDataset

import kdnb
import kdnb.api
from kdnb import models, widgets
from kdnb.errors import KdnbError
from kdnb.engine.events import Dispatcher, RunState, report_phase
from kdnb.engine.history import History
from kdnb.engine.loop import fit
from kdnb.plots.history import HistoryFigure, Run, binned, plot_history
from kdnb.widgets import live
from kdnb.widgets.live import LiveChart, summary_line
from kdnb.widgets.sparsity import SparsityExplorer
from kdnb.widgets.temperature import TemperatureExplorer, soft_labels


def loader(n: int = 96, seed: int = 0, batch_size: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()), batch_size=batch_size)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    net = models.mlp(8, [32], 3)
    fit(net, loader(), epochs=15, lr=1e-2)
    return net


@pytest.fixture
def shell():
    InteractiveShell.clear_instance()
    yield InteractiveShell.instance()
    InteractiveShell.clear_instance()


class Clock:
    """A fake ``time.perf_counter`` for the chart: steps and draws advance it by what they 'cost'."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def drive(chart: LiveChart, clock: Clock, steps: int, step_s: float, title: str = "train", extra=None) -> RunState:
    """A synthetic run: ``steps`` steps of ``step_s`` seconds each, five epochs, through the chart's events."""
    history = History()
    state = RunState(model=torch.nn.Linear(1, 1), history=history, epochs=5, steps_per_epoch=steps // 5, title=title)
    chart.on_run_start(state)
    for step in range(1, steps + 1):
        clock.now += step_s
        state.step = step
        state.terms = {"loss": 1 / step, "kd": 0.5 / step}
        history.log_step(state.terms)
        if extra:
            state.extra["sparsity"] = extra(step)
        chart.on_step_end(state)
        if step % (steps // 5) == 0:
            history.log_epoch({"train_loss": 1 / step, "val_acc": 1 - 1 / step})
            chart.on_epoch_end(state)
    history.status = "completed"
    chart.on_run_end(state)
    return state


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(live.time, "perf_counter", fake)
    real_png = live.encoded

    def slow_png(figure):  # every redraw costs 50 ms of the fake clock
        fake.now += 0.05
        return real_png(figure)

    monkeypatch.setattr(live, "encoded", slow_png)
    return fake


# ---- the live chart ----

def test_chart_redraws_at_most_max_rate_times_a_second(shell, clock):
    chart = LiveChart(image=True, max_rate=4.0, budget=1.0)  # drawing is free of budget: only the rate limits
    with capture_output():
        drive(chart, clock, steps=1000, step_s=0.002)  # 500 steps a second for 2 s
    run_seconds = 1000 * 0.002 + 0.05 * chart.redraws
    assert 2 <= chart.redraws <= run_seconds * 4 + 1  # + the last one, when the run ends


def frame_times(chart: LiveChart, clock: Clock, monkeypatch, draw_s: float, steps: int = 1000,
                step_s: float = 0.01) -> list[float]:
    """Seconds into a synthetic run at which the chart drew, each redraw costing ``draw_s`` of the fake clock."""
    drawn_at = []
    real = live.encoded

    def recording(canvas):
        drawn_at.append(clock.now)
        clock.now += draw_s - 0.05  # the clock fixture already charges 50 ms a redraw
        return real(canvas)

    monkeypatch.setattr(live, "encoded", recording)
    start = clock.now
    with capture_output():
        drive(chart, clock, steps=steps, step_s=step_s)
    return [at - start for at in drawn_at]


def test_chart_draws_a_first_frame_at_once_then_steadily_within_its_budget(shell, clock, monkeypatch):
    chart = LiveChart(image=True, max_rate=4.0, budget=0.04)
    first, *steady, final = frame_times(chart, clock, monkeypatch, draw_s=0.02)  # a 10 s run, 20 ms redraws
    assert first <= 1.0  # a picture within a second of the start
    gaps = [b - a for a, b in zip([first, *steady], steady)]
    assert gaps and max(gaps) - min(gaps) <= 0.03  # a steady rate: 20 ms / 4 % = one frame every 0.5 s
    assert min(gaps) == pytest.approx(0.02 / 0.04 + 0.02, abs=0.03)
    assert 0.02 * len(steady) <= 0.04 * 10.5  # within budget


def test_chart_draws_every_second_even_when_a_redraw_is_dear(shell, clock, monkeypatch):
    chart = LiveChart(image=True, max_rate=4.0, budget=0.04)
    first, *steady, final = frame_times(chart, clock, monkeypatch, draw_s=0.2)  # 0.2 s / 4 % would be 5 s apart
    gaps = [b - a for a, b in zip([first, *steady], steady)]
    assert first <= 1.0 and len(steady) >= 8 and max(gaps) <= 1.0 + 0.2 + 0.011  # the interval, a redraw, a step


def test_pruning_phases_draw_their_progress_between_steps(shell, clock):
    chart = LiveChart(image=True, max_rate=4.0)
    state = RunState(model=torch.nn.Linear(1, 1), history=History(), epochs=1, steps_per_epoch=1, title="prune")
    notes = []
    with capture_output() as captured:
        for layer in range(53):  # 52 layers re-solved in 0.1 s each, before any training step
            clock.now += 0.1
            report_phase(Dispatcher([chart]), state, "rebuild", layer, 52)
            notes.append(chart.note)
    assert notes[7] == "rebuild: layer 7 of 52" and chart.redraws >= 4  # 5.2 s of phase: a frame every second
    assert captured.outputs[0].data["text/plain"].startswith("live chart: rebuild: layer")
    assert chart._figure.figure.texts[0].get_text().startswith("rebuild: layer")


def test_chart_updates_one_display_and_leaves_png_and_summary(shell, clock):
    chart = LiveChart(image=True, max_rate=4.0, budget=1.0)
    with capture_output() as captured:
        drive(chart, clock, steps=200, step_s=0.01)
    outputs = captured.outputs
    assert len(outputs) == chart.redraws >= 2
    assert len({out.transient["display_id"] for out in outputs}) == 1  # one display, never cleared and re-made
    assert [out.update for out in outputs] == [False] + [True] * (chart.redraws - 1)
    final = outputs[-1].data
    assert base64.b64decode(final["image/png"]).startswith(b"\x89PNG")
    assert final["text/plain"] == summary_line(chart.runs[0]) == (
        "train: completed, 5 epochs (200 steps), loss 1 -> 0.005, val_acc 99.50%")
    assert summary_line(chart.runs[0]) in captured.stdout


def test_runs_of_one_call_follow_one_another_and_a_baseline_is_overlaid(shell, clock):
    chart = LiveChart(image=True)
    with capture_output() as captured:
        drive(chart, clock, steps=100, step_s=0.01, title="finetune 1/2 (unstructured)")
        drive(chart, clock, steps=50, step_s=0.01, title="finetune 2/2 (unstructured)", extra=lambda step: step / 100)
        drive(chart, clock, steps=50, step_s=0.01, title="control (unstructured)")
    assert [run.title for run in chart.runs] == ["finetune 1/2 (unstructured)", "finetune 2/2 (unstructured)",
                                                 "control (unstructured)"]
    figure = chart._figure.figure
    loss, accuracy, sparsity = figure.axes
    assert [t.get_text() for t in loss.texts] == ["1/2", "2/2"]  # what tells the rounds apart: no overlapping titles
    assert loss.get_xlabel() == "step" and accuracy.get_ylabel() == "accuracy (%)"
    assert accuracy.get_xlabel().startswith("step")  # one unit for the steps of every panel
    assert sparsity.get_ylabel() == "sparsity (%)" and sparsity.get_lines()[0].get_xdata()[0] == 101
    # one entry per arm (the rounds are one arm), under the panel, named by what tells the arms apart
    assert [t.get_text() for t in accuracy.get_legend().get_texts()] == ["finetune", "control"]
    assert accuracy.get_ylim() == sparsity.get_ylim() == (0, 100)
    artists = chart._figure._artists  # the second round starts where the first ended; the control from 0, over it
    assert list(artists["acc", 0].get_xdata()) == [20, 40, 60, 80, 100]
    assert list(artists["acc", 1].get_xdata()) == [110, 120, 130, 140, 150]
    assert artists["loss", 1, "loss"].get_xdata()[0] == 101
    assert list(artists["acc", 2].get_xdata()) == [110, 120, 130, 140, 150]  # overlaid on the round it follows
    assert artists["loss", 2, "loss"].get_xdata()[0] == 101
    assert artists["loss", 2, "loss"].get_color() != artists["loss", 1, "loss"].get_color()
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["loss", "kd", "control"]
    assert artists["acc", 0].get_color() == artists["acc", 1].get_color() != artists["acc", 2].get_color()
    assert captured.outputs[-1].data["text/plain"].splitlines() == [summary_line(run) for run in chart.runs]
    assert "sparsity 50.0%" in captured.outputs[-1].data["text/plain"]


def test_distill_and_scratch_share_their_axes(shell, clock):
    chart = LiveChart(image=True)
    with capture_output():
        drive(chart, clock, steps=100, step_s=0.01, title="distill")
        drive(chart, clock, steps=100, step_s=0.01, title="scratch")
    artists = chart._figure._artists
    assert list(artists["acc", 0].get_xdata()) == list(artists["acc", 1].get_xdata()) == [20, 40, 60, 80, 100]
    scratch = artists["loss", 1, "loss"]
    assert scratch.get_label() == "scratch" and scratch.get_zorder() > artists["loss", 0, "kd"].get_zorder()  # on top


def test_seeds_of_an_arm_are_thin_with_a_bold_mean_and_each_arm_is_in_the_legend_once(shell, clock):
    chart = LiveChart(image=True)
    with capture_output():
        for _ in range(3):  # as kdnb.distill(..., baseline=("scratch", "pseudo"), seeds=(0, 1, 2)) runs them
            for title in ("distill", "scratch", "pseudo"):
                drive(chart, clock, steps=50, step_s=0.01, title=title)
    loss, accuracy = chart._figure.figure.axes
    assert [t.get_text() for t in accuracy.get_legend().get_texts()] == ["distill", "scratch", "pseudo"]
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["loss", "kd", "scratch", "pseudo"]
    artists = chart._figure._artists
    assert {artists["acc", i].get_color() for i in (0, 3, 6)} == {artists["mean", "distill"].get_color()}
    assert len({artists["mean", arm].get_color() for arm in ("distill", "scratch", "pseudo")}) == 3
    assert artists["acc", 3].get_linewidth() < artists["mean", "distill"].get_linewidth()
    assert all(artists["acc", i].get_xdata()[0] == 10 for i in range(9))  # every seed from step 0
    assert loss.texts[0].get_text() == "distill" and len(loss.texts) == 1


def test_no_empty_accuracy_axes_before_the_first_epoch(shell):
    history = History()
    history.log_step({"loss": 2.0})
    figure = HistoryFigure(live=True)
    figure.update([Run("train", history, planned_steps=100)], note="score: layer 1 of 4")
    accuracy = figure.figure.axes[1]
    assert accuracy.get_ylim() == (0, 100) and figure._waiting.get_visible()
    assert figure.figure.axes[0].get_xlim()[1] >= 100  # the planned steps: the axis stays still while it fills
    history.log_epoch({"train_loss": 1.0, "val_acc": 0.9})
    figure.update([Run("train", history, epoch_steps=[1])])
    assert not figure._waiting.get_visible()


def test_one_run_has_no_accuracy_legend_that_could_misname_it(shell, clock):
    chart = LiveChart(image=True)
    with capture_output():
        drive(chart, clock, steps=50, step_s=0.01, title="train")
    assert chart._figure.figure.axes[1].get_legend() is None
    assert chart._figure.figure.axes[1].get_title() == "validation accuracy"


def test_real_run_with_the_chart(shell):
    chart = LiveChart(image=True)
    with capture_output() as captured:
        history = fit(models.mlp(8, [8], 3), loader(), loader(seed=1), epochs=2, callbacks=[chart], title="train")
    assert chart.redraws >= 1 and captured.outputs[-1].data["text/plain"] == summary_line(chart.runs[0])
    assert history.status == "completed" and captured.stdout.strip().endswith(summary_line(chart.runs[0]))


def test_without_a_notebook_the_chart_prints_its_summary_only(shell):
    chart = LiveChart(image=False)
    with capture_output() as captured:
        fit(models.mlp(8, [8], 3), loader(), epochs=1, callbacks=[chart])
    assert chart.redraws == 0 and not captured.outputs
    assert captured.stdout.strip() == summary_line(chart.runs[0])
    assert summary_line(chart.runs[0]).startswith("train: completed, 1 epoch (6 steps), loss ")


def test_a_chart_that_cannot_draw_warns_and_training_goes_on(shell, monkeypatch):
    def broken(figure):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(live, "encoded", broken)
    chart = LiveChart(image=True, budget=1.0, max_rate=1000)
    with pytest.warns(RuntimeWarning, match="the live chart stopped drawing.*training continues"):
        history = fit(models.mlp(8, [8], 3), loader(), epochs=1, callbacks=[chart])
    assert history.status == "completed" and chart.image is False


def test_live_chart_for(monkeypatch):
    assert widgets.live_chart_for(False) is None
    assert widgets.live_chart_for("auto") is None  # no kernel here
    assert isinstance(widgets.live_chart_for(True), LiveChart) and widgets.live_chart_for(True).image is False
    monkeypatch.setattr("kdnb.widgets._support.in_kernel", lambda: True)
    monkeypatch.setattr("kdnb.widgets.live.in_kernel", lambda: True)
    chart = widgets.live_chart_for("auto")
    assert isinstance(chart, LiveChart) and chart.image is True
    with pytest.raises(KdnbError, match="plot should be True, False or 'auto'"):
        widgets.live_chart_for("yes")


def test_kdnb_plot_0_turns_the_chart_off(monkeypatch):
    monkeypatch.setenv("KDNB_PLOT", "0")
    assert not any(isinstance(s, LiveChart) for s in kdnb.api.subscribers(progress=False, plot=True))
    monkeypatch.setenv("KDNB_PLOT", "1")
    assert any(isinstance(s, LiveChart) for s in kdnb.api.subscribers(progress=False, plot=True))


# ---- the static figure ----

def test_binned_keeps_short_series_and_averages_long_ones():
    x, y = binned([3.0, 1.0, 2.0])
    assert x.tolist() == [1, 2, 3] and y.tolist() == [3, 1, 2]
    values = [float(i % 7) for i in range(1003)]
    x, y = binned(values, max_points=100)  # bins of ceil(1003 / 100) = 11 steps
    assert len(y) == 92 and x[0] == pytest.approx(6) and y[0] == pytest.approx(sum(values[:11]) / 11)
    assert x[-1] == pytest.approx(1002.5) and y[-1] == pytest.approx(sum(values[1001:]) / 2)  # a shorter last bin


def test_plot_history_of_one_run_and_of_several():
    history = fit(models.mlp(8, [8], 3), loader(), loader(seed=1), epochs=2)
    figure = plot_history(history)
    loss, accuracy = figure.axes
    assert loss.get_ylabel() == "loss" and accuracy.get_xlabel().startswith("step")
    assert list(accuracy.get_lines()[0].get_xdata()) == [6, 12]  # the end of each of the two epochs of 6 steps
    figure = plot_history({"distill": history, "scratch": history})
    assert [t.get_text() for t in figure.axes[0].texts] == ["distill"]  # scratch is overlaid, named in the legend
    assert [t.get_text() for t in figure.axes[1].get_legend().get_texts()] == ["distill", "scratch"]


def test_history_figure_reuses_its_lines():
    history = History()
    history.log_step({"loss": 1.0})
    figure = HistoryFigure()
    figure.update([Run("train", history)])
    line = figure.figure.axes[0].get_lines()[0]
    history.log_step({"loss": 0.5})
    figure.update([Run("train", history)])
    assert figure.figure.axes[0].get_lines()[0] is line and list(line.get_ydata()) == [1.0, 0.5]


# ---- the sparsity explorer ----

def test_slider_moves_update_the_numbers_and_fill_the_curve(trained):
    explorer = SparsityExplorer(trained, loader(seed=1), data=loader(), namespace={})
    dense = explorer.numbers
    assert dense["accuracy"] == explorer.dense["accuracy"] and dense["nonzero"] == dense["params"]
    explorer.slider.value = 0.9
    assert explorer.numbers["sparsity"] == 0.9 and explorer.numbers["nonzero"] < 0.2 * dense["params"]
    assert explorer.numbers["bytes"] < dense["bytes"]
    assert "90%" in explorer.table.value and f"{explorer.numbers['nonzero']:,}" in explorer.table.value
    assert sorted(explorer.curves["l1", False]) == [0.0, 0.5, 0.8, 0.9, 0.95]  # opened with a preview
    explorer.slider.value = 0.33
    assert sorted(explorer.curves["l1", False]) == [0.0, 0.33, 0.5, 0.8, 0.9, 0.95]
    assert bytes(explorer.image.value).startswith(b"\x89PNG")


def test_criterion_and_mode_switch_and_score_once(trained, monkeypatch):
    explorer = SparsityExplorer(trained, loader(seed=1), data=loader(), namespace={})
    calls = []
    real = kdnb.widgets.sparsity.importance
    monkeypatch.setattr(kdnb.widgets.sparsity, "importance", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    explorer.slider.value = 0.6
    explorer.criterion.value = "taylor"
    explorer.slider.value = 0.7
    explorer.mode.value = "structured"
    explorer.slider.value = 0.5
    explorer.criterion.value = "l1"
    explorer.mode.value = "unstructured"
    # taylor, taylor structured, l1 structured; l1 unstructured was scored at the start, and nothing twice
    assert calls == ["taylor", "taylor", "l1"]
    assert set(explorer.curves) == {("l1", False), ("taylor", False), ("taylor", True), ("l1", True)}
    assert explorer.setting == {"criterion": "l1", "structured": False, "sparsity": 0.5}


def test_a_criterion_that_needs_data_says_so(trained):
    explorer = SparsityExplorer(trained, loader(seed=1), namespace={})
    before = dict(explorer.numbers)
    explorer.criterion.value = "hessian"
    assert "needs data" in explorer.message and "needs data" in explorer.table.value
    assert explorer.numbers == before and explorer.setting["criterion"] == "l1"
    with pytest.raises(KdnbError, match="needs data"):
        SparsityExplorer(trained, loader(seed=1), criterion="taylor", namespace={})
    with pytest.raises(KdnbError, match="did you mean 'taylor'"):
        SparsityExplorer(trained, loader(seed=1), criterion="tailor", namespace={})


def test_apply_stores_a_pruned_copy_and_leaves_the_model(trained):
    state = {n: t.clone() for n, t in trained.state_dict().items()}
    namespace: dict = {}
    explorer = SparsityExplorer(trained, loader(seed=1), data=loader(), namespace=namespace)
    explorer.slider.value = 0.8
    explorer.name.value = "small_net"
    explorer.button.click()
    pruned = namespace["small_net"]
    assert "small_net" in explorer.status.value
    assert kdnb.measure(pruned, loader(seed=1), repeats=1, warmup=0).sparsity == pytest.approx(0.8, abs=0.01)
    assert all(torch.equal(state[n], t) for n, t in trained.state_dict().items())
    explorer.name.value = "not a name"
    explorer.button.click()
    assert "not a valid variable name" in explorer.status.value


def test_the_dropdown_lists_the_registry(trained):
    from kdnb.engine.prune.score import criteria

    explorer = SparsityExplorer(trained, loader(seed=1), data=loader(), namespace={})
    assert tuple(explorer.criterion.options) == criteria.names()
    explorer.criterion.value = "obs"
    assert explorer.setting["criterion"] == "obs" and ("obs", False) in explorer.curves
    explorer.criterion.value = "thinet"  # scores channels: said, numbers kept
    assert "structured=True" in explorer.message and explorer.setting["criterion"] == "obs"
    explorer.mode.value = "structured"
    assert explorer.setting == {"criterion": "thinet", "structured": True, "sparsity": 0.0}


@pytest.mark.parametrize("criterion, structured", [("l1", False), ("taylor", False), ("obs", False),
                                                   ("l1", True), ("thinet", True)])
def test_apply_stores_what_the_preview_showed(trained, criterion, structured):
    """The preview masks only, and so does apply (reconstruct=False), even on a shuffled loader: the model
    stored scores the accuracy the explorer displayed."""
    shuffled = DataLoader(loader().dataset, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(4))
    val = loader(seed=1)
    explorer = SparsityExplorer(trained, val, criterion=criterion, data=shuffled, structured=structured,
                                namespace={})
    explorer.slider.value = 0.6
    model = explorer.apply("pruned")
    assert kdnb.evaluate(model, val)["accuracy"] == explorer.numbers["accuracy"]


def test_the_explorer_leaves_the_users_shuffling_as_it_was(trained):
    def shuffled():
        return DataLoader(loader().dataset, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(4))

    data, untouched = shuffled(), shuffled()
    explorer = SparsityExplorer(trained, loader(seed=1), criterion="taylor", data=data, namespace={})
    explorer.slider.value = 0.5
    explorer.apply("pruned")
    assert torch.equal(torch.cat([y for _, y in data]), torch.cat([y for _, y in untouched]))


def test_apply_stores_in_the_notebook_by_default(trained, shell):
    explorer = SparsityExplorer(trained, loader(seed=1), data=loader())
    explorer.mode.value = "structured"
    explorer.slider.value = 0.5
    model = explorer.apply("thin")
    assert shell.user_ns["thin"] is model and model[1].out_features < trained[1].out_features


def test_apply_never_overwrites_a_variable_of_the_users(trained):
    users_model = torch.nn.Linear(1, 1)
    namespace: dict = {"pruned": users_model, "pruned_2": "also theirs"}
    explorer = SparsityExplorer(trained, loader(seed=1), data=loader(), namespace=namespace)
    assert explorer.name.value == "pruned_3"  # the box suggests a free name
    explorer.slider.value = 0.5
    model = explorer.apply("pruned")  # asked for a taken name: stored beside it, and said so
    assert namespace["pruned"] is users_model and namespace["pruned_2"] == "also theirs"
    assert namespace["pruned_3"] is model and explorer.stored_as == "pruned_3"
    assert "<code>pruned_3</code>" in explorer.status.value and "<code>pruned</code> holds a variable of yours" in explorer.status.value
    explorer.slider.value = 0.7
    again = explorer.apply("pruned_3")  # its own earlier result: may be replaced
    assert namespace["pruned_3"] is again
    explorer.apply("pruned", replace=True)  # only when asked
    assert namespace["pruned"] is not users_model


def test_saved_explorer_output_has_a_picture(trained):
    explorer = SparsityExplorer(trained, loader(seed=1), data=loader(), namespace={})
    bundle = explorer._repr_mimebundle_()
    assert base64.b64decode(bundle["image/png"]).startswith(b"\x89PNG")
    assert "application/vnd.jupyter.widget-view+json" in bundle and "accuracy" in bundle["text/plain"]
    # a static page (nbconvert's HTML, GitHub) keeps the numbers' table beside the curve
    assert "<table>" in bundle["text/html"] and "non-zero params" in bundle["text/html"]
    assert "data:image/png;base64," in bundle["text/html"]
    temperature = TemperatureExplorer(trained, loader(seed=1))
    assert base64.b64decode(temperature._repr_mimebundle_()["image/png"]).startswith(b"\x89PNG")


# ---- the temperature explorer ----

def test_temperature_slider_and_sample_chooser(trained):
    explorer = TemperatureExplorer(trained, loader(seed=1), temperature=1.0)
    assert explorer.sample.options[0][0].startswith("0 (class ")
    entropy = lambda: float(explorer.text().split("entropy ")[1].split(" ")[0])  # noqa: E731
    cold = entropy()
    explorer.temperature.value = 10.0
    assert entropy() > cold and "T = 10.0" in explorer.numbers.value
    explorer.sample.value = 3
    assert explorer.current == (3, 10.0) and explorer.text().startswith("sample 3 (class ")
    assert bytes(explorer.image.value).startswith(b"\x89PNG")


def test_soft_labels_are_softmax_of_logits_over_t():
    z = torch.tensor([2.0, 1.0, -1.0])
    for t in (0.5, 1.0, 4.0):
        expected = [math.exp(v / t) for v in z.tolist()]
        assert soft_labels(z, t).tolist() == pytest.approx([e / sum(expected) for e in expected])


def test_temperature_explorer_takes_tensors_pairs_and_rejects_junk(trained):
    x = torch.randn(5, 8)
    assert TemperatureExplorer(trained, x).labels is None
    assert TemperatureExplorer(trained, (x, torch.tensor([0, 1, 2, 0, 1]))).labels.tolist() == [0, 1, 2, 0, 1]
    with pytest.raises(KdnbError, match="samples should be"):
        TemperatureExplorer(trained, 42)
    with pytest.raises(KdnbError, match="temperature should be a number > 0"):
        TemperatureExplorer(trained, x, temperature=0)


# ---- without ipywidgets ----

def test_explorers_fall_back_to_text_with_an_install_hint(trained, monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # `import ipywidgets` now raises ImportError
    explorer = SparsityExplorer(trained, loader(seed=1), namespace={})
    assert explorer.widget is None and explorer.slider is None
    numbers = explorer.at(0.7)
    assert numbers["sparsity"] == 0.7 and "sparsity 70%" in repr(explorer)
    text = explorer._repr_mimebundle_()["text/plain"]
    assert "needs ipywidgets: pip install 'ipywidgets>=8'" in text and "accuracy" in text
    temperature = TemperatureExplorer(trained, loader(seed=1))
    assert temperature.widget is None and "T = 2.0" in temperature.show(1, 2.0)
    assert "pip install" in temperature._repr_mimebundle_()["text/plain"]


# ---- the progress bar ----

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture
def notebook_bars(shell, monkeypatch):
    """tqdm.auto as in a notebook kernel: the ipywidgets bar."""
    import tqdm.auto
    import tqdm.notebook

    monkeypatch.setattr(tqdm.auto, "tqdm", tqdm.notebook.tqdm)


def test_a_finished_bar_leaves_a_static_line_and_no_widget(notebook_bars):
    from kdnb.progress import ProgressBar

    with capture_output() as captured:
        fit(models.mlp(8, [8], 3), loader(), loader(seed=1), epochs=2, callbacks=[ProgressBar()], title="train")
    first, *_, last = captured.outputs
    assert WIDGET_VIEW in first.data and not first.update  # the live bar
    assert last.update and WIDGET_VIEW not in last.data  # replaced in place by its final line
    assert re.fullmatch(r"train: 12/12 steps \[00:0\d, .*step/s, epoch=2/2, loss=\d\.\d{4}, val_acc=0\.\d{3}\]",
                        last.data["text/plain"])
    assert "width:100.0%" in last.data["text/html"] and "|" not in last.data["text/plain"]  # no text-drawn bar


def test_pruning_phases_share_one_bar_that_ends_as_a_line(notebook_bars):
    from kdnb.progress import ProgressBar

    bar = ProgressBar()
    state = RunState(model=torch.nn.Linear(1, 1), history=History(), epochs=1, steps_per_epoch=1, title="prune")
    with capture_output() as captured:
        for phase, total in (("score", 3), ("rebuild", 4)):
            for done in range(total + 1):
                report_phase(Dispatcher([bar]), state, phase, done, total)
    ids = {out.transient["display_id"] for out in captured.outputs}
    last = captured.outputs[-1].data
    assert len(ids) == 1 and WIDGET_VIEW not in last
    assert last["text/plain"].startswith("score: 3 of 3, rebuild: layer 4 of 4 [")


def test_a_run_stopped_early_ends_on_axes_that_fit_its_steps():
    history = History()
    for step in range(1, 41):
        history.log_step({"loss": 1 / step})
    figure = HistoryFigure(live=True)
    run = Run("finetune", history, planned_steps=45_000)
    figure.update([run])
    assert figure.figure.axes[0].get_xlim()[1] > 45_000  # while it runs: the steps it plans, a still axis
    history.status = "stopped"
    figure.update([run])
    assert figure.figure.axes[0].get_xlim()[1] < 45  # its last frame: the steps it made
