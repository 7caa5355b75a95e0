"""The saved notebooks: executed top to bottom with outputs, an exercise notebook per tutorial with a
solutions notebook beside it, stubs reporting "not done yet" and solutions passing every check.

nbval (pytest's notebooks/ run) re-executes every notebook; these tests read the saved files, so
they also catch a notebook committed without its outputs or regenerated only in part.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from nbsource import notebook_of, targets  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
TUTORIALS = sorted(NOTEBOOKS.glob("[0-9][0-9]-*.ipynb"))
EXERCISES = sorted((NOTEBOOKS / "exercises").glob("*.ipynb"))
SOLUTIONS = sorted((NOTEBOOKS / "exercises" / "solutions").glob("*.ipynb"))


def code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def text(cell):
    parts = []
    for output in cell.outputs:
        parts.append(output.get("text", "") or output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


@pytest.mark.parametrize("path", sorted(targets()), ids=lambda p: p.name)
def test_saved_notebook_matches_its_source(path):
    """The committed .ipynb has the cells its notebooks/src/ source makes (sources compared, nothing run)."""
    source, which = targets()[path]
    made = [(c.cell_type, c.source, c.metadata.get("tags")) for c in notebook_of(source, which).cells]
    saved = [(c.cell_type, c.source, c.metadata.get("tags")) for c in nbformat.read(path, as_version=4).cells]
    assert saved == made, f"{path.name} drifted from {source.name}: run `make notebooks`"


def test_every_notebook_has_a_source():
    made = set(targets())
    assert set(TUTORIALS + EXERCISES + SOLUTIONS) <= made, "a notebook without a source in notebooks/src/"


def test_tutorials_use_only_the_public_api():
    for path in TUTORIALS:
        source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
        assert "kdnb.engine" not in source, f"{path.name} imports kdnb's internals"


def test_the_six_tutorials_exist():
    assert [p.name[:2] for p in TUTORIALS] == ["00", "01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", TUTORIALS + EXERCISES + SOLUTIONS, ids=lambda p: p.name)
def test_saved_executed_in_order_without_errors(path):
    cells = code_cells(path)
    counts = [c.execution_count for c in cells]
    assert counts == list(range(1, len(cells) + 1)), "run it top to bottom: make notebooks"
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[0].get("evalue")
    assert sum("nbval-check-output" in c.metadata.get("tags", ()) for c in cells) >= 1, "no cell's output is checked"
    assert not any("NBVAL" in c.source for c in cells), "a test marker in the code students read: use the cell's tag"


@pytest.mark.parametrize("path", TUTORIALS + EXERCISES + SOLUTIONS, ids=lambda p: p.name)
def test_saved_with_the_language_info_a_kernel_reports(path):
    """A frontend fills language_info from the kernel on opening: saved that way, opening changes nothing."""
    info = nbformat.read(path, as_version=4).metadata.language_info
    assert {"name", "version", "mimetype", "file_extension", "codemirror_mode", "pygments_lexer"} <= set(info)


def test_quickstart_as_a_static_page():
    """As GitHub and nbviewer show it (nbconvert's HTML, no kernel): each run's bar is its final line, never a
    bar drawn in text, and the sparsity explorer keeps its numbers' table beside its curve."""
    from nbconvert import HTMLExporter

    page, _ = HTMLExporter().from_notebook_node(nbformat.read(NOTEBOOKS / "00-quickstart.ipynb", as_version=4))
    assert "\u2588" not in page and "█" not in page  # tqdm's text bar blocks
    assert page.count("kdnb-progress") >= 3 and "kdnb-sparsity-numbers" in page
    assert "non-zero params" in page


def test_quickstart_is_short_and_uses_the_magics():
    cells = nbformat.read(NOTEBOOKS / "00-quickstart.ipynb", as_version=4).cells
    assert len(cells) < 10
    source = "\n".join(c.source for c in cells)
    for needed in ("%load_ext kdnb", "%%distill", "%%prune", "kdnb.compare", "SparsityExplorer"):
        assert needed in source


@pytest.mark.parametrize("tutorial", TUTORIALS, ids=lambda p: p.name)
def test_each_tutorial_has_an_exercise_notebook_with_solutions(tutorial):
    exercises = [p for p in EXERCISES if p.name[:2] == tutorial.name[:2]]
    assert exercises, f"no exercise notebook for {tutorial.name}"
    for exercise in exercises:
        assert (NOTEBOOKS / "exercises" / "solutions" / f"{exercise.stem}-solutions.ipynb").exists()


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_unfilled_exercises_report_not_done_yet(path):
    checks = [c for c in code_cells(path) if "check." in c.source]
    assert checks
    for cell in checks:
        assert "not done yet" in text(cell), cell.source
        assert "NotImplementedError" in cell.source or "None  # your code here" in cell.source


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solutions_pass_every_check(path):
    checks = [c for c in code_cells(path) if "check." in c.source]
    assert checks
    for cell in checks:
        assert "Well done" in text(cell), text(cell)
        assert "NotImplementedError" not in cell.source


ROOT = NOTEBOOKS.parent


@pytest.mark.slow
def test_tutorials_pass_without_the_cpus_vector_kernels():
    """The tutorials' checks hold on any CPU: nbval re-runs them with ATen's portable kernels
    (``ATEN_CPU_CAPABILITY=default``, no AVX), which change the floating-point results of training.
    The native run is the suite's own nbval pass over notebooks/."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *map(str, TUTORIALS)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def readme_script() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The API at a glance"):]
    return section[section.index("```python\n") + len("```python\n"):section.index("\n```\n")]


@pytest.mark.slow
def test_the_readme_api_script_runs_and_prints_its_results(tmp_path):
    script = tmp_path / "glance.py"
    script.write_text(readme_script())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "always"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for printed in ("gap closure", "pruned 90.00% of prunable weights", "params x", "nonzero params"):
        assert printed in done.stdout, done.stdout
    warnings = [line for line in done.stderr.splitlines() if re.search(r"\.py:\d+: \w*Warning", line)]
    assert all(line.startswith(str(script)) for line in warnings), warnings  # at the script's lines, not kdnb's
