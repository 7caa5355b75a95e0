"""%%distill, %%prune and %kdnb through a real IPython shell: every option path, -o, one-line UsageErrors
with the fix, the notebook's variables untouched after an error, and re-running a cell is harmless."""
from __future__ import annotations

import functools
import inspect
import warnings

import pytest
import torch
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from torch.utils.data import DataLoader, TensorDataset

import kdnb
import kdnb.api
from kdnb import magics, models


def loader(n: int = 48, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()), batch_size=16)


@pytest.fixture
def shell():
    """A fresh shell with the extension loaded and a small model and data in the notebook."""
    InteractiveShell.clear_instance()
    sh = InteractiveShell.instance()
    sh.run_line_magic("load_ext", "kdnb")
    torch.manual_seed(0)
    sh.user_ns.update(torch=torch, net=models.mlp(8, [16], 3), small=models.mlp(8, [4], 3), train=loader(),
                      val=loader(seed=1))
    yield sh
    sh.run_line_magic("unload_ext", "kdnb")
    InteractiveShell.clear_instance()


@pytest.fixture
def calls(monkeypatch):
    """Replace the verbs by recorders with their real signatures: what exactly reaches kdnb.prune/distill."""
    seen: list[tuple[str, dict]] = []
    for name in magics.VERBS:
        real = getattr(kdnb.api, name, None)
        if real is None:
            continue

        @functools.wraps(real)
        def record(*args, _name=name, **kwargs):
            assert not args
            seen.append((_name, kwargs))
            return f"result of {_name}"

        record.__signature__ = inspect.signature(real)
        monkeypatch.setattr(kdnb.api, name, record)
    return seen


def cell(sh, line: str, body: str = ""):
    """Run ``%%verb line`` over ``body`` the way a notebook does; UsageErrors propagate."""
    verb, _, rest = line.partition(" ")
    return sh.run_cell_magic(verb, rest, body)


def snapshot(sh) -> dict:
    return {k: (id(v), {n: t.clone() for n, t in v.state_dict().items()} if isinstance(v, torch.nn.Module) else None)
            for k, v in sh.user_ns.items() if not k.startswith("_")}


def assert_untouched(sh, before: dict) -> None:
    after = snapshot(sh)
    assert after.keys() == before.keys()
    for name, (ident, state) in before.items():
        assert after[name][0] == ident, name
        if state is not None:
            assert all(torch.equal(state[n], t) for n, t in after[name][1].items()), name


# ---- the extension ----

def test_load_registers_the_magics_and_unload_removes_them(shell):
    assert {"distill", "prune"} <= set(shell.magics_manager.magics["cell"])
    assert "kdnb" in shell.magics_manager.magics["line"]
    shell.run_line_magic("unload_ext", "kdnb")
    assert not {"distill", "prune"} & set(shell.magics_manager.magics["cell"])
    shell.run_line_magic("load_ext", "kdnb")
    shell.run_line_magic("reload_ext", "kdnb")
    assert {"distill", "prune"} <= set(shell.magics_manager.magics["cell"])


@pytest.mark.parametrize("verb", magics.VERBS)
def test_help_lists_every_keyword_of_the_verb(shell, verb):
    doc = shell.find_cell_magic(verb).__doc__
    for name in magics.verb_parameters(getattr(kdnb.api, verb)):
        assert f"--{name}" in doc
    assert f"%%{verb}" in doc and "-o NAME" in doc
    assert doc.startswith(f"%%{verb} [-o NAME]") and "``" not in doc and "::" not in doc  # plain text, no reST


def test_import_kdnb_in_a_shell_declares_the_magics():
    InteractiveShell.clear_instance()
    sh = InteractiveShell.instance()
    try:
        kdnb._declare_magics()  # what `import kdnb` does inside a kernel (this process imported it long ago)
        assert sh.find_cell_magic("distill").__doc__.startswith("%%distill")  # loaded on first use
        assert sh.find_line_magic("kdnb") is not None and sh.find_cell_magic("prune") is not None
    finally:
        sh.run_line_magic("unload_ext", "kdnb")
        InteractiveShell.clear_instance()


# ---- option paths (recorded, no training) ----

def test_body_lines_are_evaluated_in_the_notebook(shell, calls):
    cell(shell, "prune", "# prune the big one\nmodel = net\n\nsparsity = 0.25 * 2  # half\ndata = train\n"
                         "callbacks = [lambda: torch.zeros(1)]")
    name, kwargs = calls[-1]
    assert name == "prune" and kwargs["model"] is shell.user_ns["net"] and kwargs["data"] is shell.user_ns["train"]
    assert kwargs["sparsity"] == 0.5 and torch.equal(kwargs["callbacks"][0](), torch.zeros(1))
    assert set(kwargs) == {"model", "sparsity", "data", "callbacks"}  # defaults stay the verb's own


def test_line_options_expressions_words_and_flags(shell, calls):
    cell(shell, "prune --sparsity 0.1*9 --criterion taylor --structured --finetune 2 --plot False", "model = net")
    kwargs = calls[-1][1]
    assert kwargs["sparsity"] == pytest.approx(0.9) and kwargs["criterion"] == "taylor"
    assert kwargs["structured"] is True and kwargs["finetune"] == 2 and kwargs["plot"] is False
    cell(shell, "prune --sparsity 0.5 --structured False --criterion 'l1' --device cuda:0", "model = net")
    kwargs = calls[-1][1]
    assert kwargs["structured"] is False and kwargs["criterion"] == "l1" and kwargs["device"] == "cuda:0"


def test_distill_options_include_a_lambda_optimizer(shell, calls):
    cell(shell, "distill --temperature 2 --epochs 3 --method kd", "teacher = net\nstudent = small\ndata = train\n"
                                                               "optimizer = lambda p: torch.optim.SGD(p, lr=0.1)")
    name, kwargs = calls[-1]
    assert name == "distill" and kwargs["temperature"] == 2 and kwargs["method"] == "kd" and kwargs["epochs"] == 3
    assert isinstance(kwargs["optimizer"]([torch.nn.Parameter(torch.ones(1))]), torch.optim.SGD)


def test_output_stores_and_the_cell_returns_the_result(shell, calls):
    result = shell.run_cell("%%prune -o res --sparsity 0.5\nmodel = net").result
    assert result == "result of prune" == shell.user_ns["res"]
    assert cell(shell, "prune --sparsity 0.5", "model = net") == "result of prune"


# ---- every mistake is a one-line UsageError naming the fix; the notebook untouched ----

MISTAKES = [
    ("prune --sparsity 0.5", "model = net\nsparsty = 0.9", "did you mean 'sparsity'?"),
    ("prune --sparsity 0.5 --critrion l1", "model = net", "did you mean 'criterion'?"),
    ("prune --sparsity 0.5", "model = nett", "name 'nett' is not defined; did you mean 'net'?"),
    ("prune --sparsity 0.5", "model = qqqq", "name 'qqqq' is not defined; define it in a cell above first"),
    ("prune --sparsity net", "model = net", "sparsity should be float, got Sequential ..."),
    ("prune res --sparsity 0.5", "model = net", "unexpected 'res' on the line"),
    ("prune", "model = net\nsparsity = 'half'", "sparsity should be float, got str 'half'"),
    ("prune --sparsity 0.5", "model = net\nfinetune = 1.5", "finetune should be int, got float 1.5"),
    ("prune", "model = net", "needs 'sparsity'"),
    ("prune --sparsity 0.5", "model = net\nprint(model)", "line 2: expected `name = expression`"),
    ("prune --sparsity 0.5", "model = net\nepochs ==", "line 2: invalid syntax"),
    ("prune --sparsity 0.5", "model = net\nmodel = small", "'model' is set twice"),
    ("prune --sparsity 0.5", "sparsity = 0.2\nmodel = net", "'sparsity' is set twice"),
    ("prune -o net --sparsity 0.5", "model = net", "-o net would replace 'net'"),
    ("prune -o 2res --sparsity 0.5", "model = net", "not a valid variable name"),
    ("prune --sparsity", "model = net", "expected one argument"),
    ("prune --sparsity 0.5", "model = net[0][", "line 1:"),
    ("prune --sparsity 0.5", "model = 1 / 0", "ZeroDivisionError"),
    ("distill --temprature 2", "teacher = net\nstudent = small\ndata = train", "did you mean 'temperature'?"),
]


@pytest.mark.parametrize("line, body, message", MISTAKES)
def test_mistakes_are_one_line_usage_errors(shell, calls, line, body, message):
    before = snapshot(shell)
    with pytest.raises(UsageError) as error:
        cell(shell, line, body)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not calls
    assert_untouched(shell, before)


@pytest.mark.parametrize("line, body, message", [
    ("prune --sparsity 0.5 --criterion tayler", "model = net", "did you mean 'taylor'?"),
    ("prune --sparsity 1.5", "model = net", "sparsity should be a number in [0, 1)"),
    ("prune --sparsity 0.5 --criterion taylor", "model = net", "needs data"),
    ("distill --temperature -1", "teacher = net\nstudent = small\ndata = train", "temperature"),
])
def test_engine_errors_become_usage_errors(shell, line, body, message):
    before = snapshot(shell)
    with pytest.raises(UsageError) as error:
        cell(shell, line, body + "\nprogress = False")
    assert message in str(error.value) and "\n" not in str(error.value)
    assert_untouched(shell, before)


def test_run_cell_shows_one_line_not_a_traceback(shell, capsys):
    result = shell.run_cell("%%prune --sparsity 0.5\nmodel = nett")
    assert isinstance(result.error_in_exec, UsageError)
    err = capsys.readouterr()
    assert "UsageError: %%prune: line 1" in err.err + err.out and "Traceback" not in err.err + err.out


# ---- real runs: re-running a cell is harmless ----

PRUNE_CELL = "%%prune -o res --sparsity 0.5 --progress False\nmodel = net\nval = val"


def test_rerunning_a_prune_cell_gives_the_same_result_and_leaves_the_model(shell):
    dense = {n: t.clone() for n, t in shell.user_ns["net"].state_dict().items()}
    first = shell.run_cell(PRUNE_CELL).result
    state = {n: t.clone() for n, t in first.model.state_dict().items()}
    second = shell.run_cell(PRUNE_CELL).result
    assert second is shell.user_ns["res"] and second is not first
    assert all(torch.equal(state[n], t) for n, t in second.model.state_dict().items())
    assert str(second.summary()).splitlines()[:9] == str(first.summary()).splitlines()[:9]  # all but latency
    assert all(torch.equal(dense[n], t) for n, t in shell.user_ns["net"].state_dict().items())


def test_rerunning_an_inplace_prune_cell_never_prunes_twice(shell):
    cell(shell, "prune --sparsity 0.5 --inplace --progress False", "model = net")
    pruned = {n: t.clone() for n, t in shell.user_ns["net"].state_dict().items()}
    with pytest.raises(UsageError, match="already pruned.*prune_again=True"):
        cell(shell, "prune --sparsity 0.5 --inplace --progress False", "model = net")
    assert all(torch.equal(pruned[n], t) for n, t in shell.user_ns["net"].state_dict().items())


def test_distill_cell_trains_the_student_and_returns_the_result(shell):
    shell.user_ns["net"].eval()  # a teacher is used in eval mode
    res = shell.run_cell("%%distill -o res --epochs 1 --progress False\nteacher = net\nstudent = small\n"
                         "data = train\nval = val").result
    assert res is shell.user_ns["res"] and res.student is not shell.user_ns["small"]
    assert res.history.num_epochs == 1 and hasattr(res, "_repr_html_")


# ---- %kdnb ----

def test_kdnb_line_magic(shell, capsys):
    shell.run_line_magic("kdnb", "version")
    assert capsys.readouterr().out.startswith(f"kdnb {kdnb.__version__} (torch ")
    shell.run_line_magic("kdnb", "status")
    out = capsys.readouterr().out
    assert "device: " in out and "live chart: " in out and "%%prune" in out
    shell.run_line_magic("kdnb", "")
    assert "%%distill" in capsys.readouterr().out
    with pytest.raises(UsageError, match="did you mean 'status'"):
        shell.run_line_magic("kdnb", "stauts")


def test_a_warning_inside_a_prune_cell_points_at_the_cell(shell):
    """kdnb's warnings are attributed to the user's line; in a magic cell that is the cell, not IPython's
    interactiveshell.py (issue 35)."""
    shell.user_ns["few"] = DataLoader(TensorDataset(torch.randn(4, 8), torch.tensor([0, 1, 2, 0])), batch_size=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = shell.run_cell("%%prune\nmodel = net\nsparsity = 0.5\ndata = few\nprogress = False\nplot = False\n")
    assert result.success
    ours = [w for w in caught if "calibration has 4 samples" in str(w.message)]
    assert ours and all("IPython" not in w.filename and "kdnb" not in w.filename for w in ours)
    assert all(w.filename.startswith("<") for w in ours)  # IPython's name for the cell's code
