"""The magics with bad input (issue 14): every mistake, and every error from the verb, is a one-line
UsageError naming the verb and the cause; the notebook's objects are left as they were."""
from __future__ import annotations

import pytest
import torch
from badinput import assert_clean_error, assert_unchanged, snapshot
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from torch.utils.data import DataLoader, TensorDataset

import kdnb.api
from kdnb import models


def loader(n: int = 32, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()), batch_size=16, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def shell():
    InteractiveShell.clear_instance()
    sh = InteractiveShell.instance()
    sh.run_line_magic("load_ext", "kdnb")
    torch.manual_seed(0)
    sh.user_ns.update(torch=torch, net=models.mlp(8, [16], 3).eval(), small=models.mlp(8, [4], 3), train=loader(),
                      val=loader(seed=1))
    yield sh
    sh.run_line_magic("unload_ext", "kdnb")
    InteractiveShell.clear_instance()


DISTILL = "teacher = net\nstudent = small\ndata = train\nprogress = False\n"


def usage_error(sh, line: str, body: str, names) -> str:
    """The cell fails with one short UsageError naming ``names``; the notebook's models and loader as they were."""
    watched = [(name, snapshot(sh.user_ns[name], sh.user_ns["train"])) for name in ("net", "small")]
    verb, _, rest = line.partition(" ")
    error = assert_clean_error(sh.run_cell_magic, verb, rest, body, expect=UsageError, names=names)
    for name, before in watched:
        assert_unchanged(before, sh.user_ns[name], sh.user_ns["train"])
    assert "\n" not in str(error)
    return str(error)


@pytest.mark.parametrize("line, names", [
    ("distill --epochs 1 --epochs 2", "--epochs is given twice"),
    ("distill --epochs=1 --epochs 2", "--epochs is given twice"),
    ("distill -o r1 -o r2", "--output is given twice"),
    ("distill -o r1 --output r2", "--output is given twice"),
    ("distill -or1 -o r2", "--output is given twice"),
    ("distill --temperature 2 --alpha 0.5 --temperature 3", "--temperature is given twice"),
])
def test_an_option_twice_on_the_line(shell, line, names):
    usage_error(shell, line, DISTILL, names)


@pytest.mark.parametrize("body, names", [
    (DISTILL + "epochs = 1; alpha = 0.5", "line 5 holds 2 statements"),
    ("teacher = net; student = small\ndata = train", "line 1 holds 2 statements"),
])
def test_two_statements_on_one_line(shell, body, names):
    usage_error(shell, "distill", body, names)


def test_a_word_that_is_no_variable_suggests_nothing_far(shell):
    message = usage_error(shell, "distill --epochs nope", DISTILL, "'nope' is not defined")
    assert "open" not in message and "define it in a cell above" in message


def test_a_short_option_suggests_the_option_it_begins(shell):
    message = usage_error(shell, "distill --temp 2", DISTILL, "did you mean 'temperature'?")
    assert "'amp'" not in message


def test_a_misspelt_variable_suggests_the_notebook_variable(shell):
    usage_error(shell, "distill", DISTILL.replace("data = train", "data = trian"), "did you mean 'train'?")


@pytest.mark.parametrize("extra, names", [
    ("val = [1, 2, 3]", "a batch should be (inputs, labels)"),
    ("lr = float('nan')", "lr"),
    ("callbacks = 5", "callbacks"),
    ("callbacks = [1]", "callbacks[0]"),
    ("grad_clip = -1", "grad_clip"),
    ("amp = 'yes'", "amp"),
    ("scheduler = 'linear'", "scheduler"),
    ("optimizer = 'adam'", "optimizer"),
    ("seed = 'abc'", "seed"),
    ("epochs = 0", "epochs"),
    ("val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 5), torch.zeros(8).long()))",
     "input size"),
    ("data = [1, 2, 3]", "data"),
])
def test_engine_errors_in_a_distill_cell_are_one_line(shell, extra, names):
    usage_error(shell, "distill", DISTILL + extra, names)


@pytest.mark.parametrize("extra, names", [
    ("lr = float('nan')", "lr"), ("callbacks = 5", "callbacks"), ("seed = 1.5", "seed"),
])
def test_engine_errors_in_a_prune_cell_are_one_line(shell, extra, names):
    usage_error(shell, "prune --sparsity 0.5 --finetune 1", f"model = net\ndata = train\nprogress = False\n{extra}",
                names)


def test_any_exception_from_the_verb_is_one_line_and_traceback_shows_it(shell, monkeypatch, capsys):
    def broken(**kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be ...")

    broken.__signature__ = __import__("inspect").signature(kdnb.api.distill)
    monkeypatch.setattr(kdnb.api, "distill", broken)
    message = usage_error(shell, "distill", DISTILL, ("%%distill", "RuntimeError", "illegal memory access"))
    assert "%kdnb traceback" in message
    shell.run_line_magic("kdnb", "traceback")
    out = capsys.readouterr().out
    assert "Traceback" in out and "in broken" in out and "illegal memory access" in out


def test_traceback_before_any_error(shell, capsys):
    import kdnb.magics

    kdnb.magics._LAST_ERROR.clear()
    shell.run_line_magic("kdnb", "traceback")
    assert "no error" in capsys.readouterr().out
