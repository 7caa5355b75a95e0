"""Notebooks from their sources: jupytext percent-format ``.py`` files under ``notebooks/src/``.

A tutorial source ``notebooks/src/NN-name.py`` becomes ``notebooks/NN-name.ipynb``. An exercise source
``notebooks/src/exercises/NN-name.py`` becomes two notebooks, the stubs (``notebooks/exercises/``) and the
solutions (``notebooks/exercises/solutions/NN-name-solutions.ipynb``), from these markers (nbgrader's):

    def sparsity(model):
        ### BEGIN SOLUTION
        return ...                     # kept in the solutions, dropped from the stub
        ### END SOLUTION
        ### STUB raise NotImplementedError  # your code here   (in the stub only, uncommented)

so the source itself is the runnable, lintable solution. A cell tagged ``stub-only`` or ``solution-only``
(``# %% [markdown] tags=["stub-only"]``) goes into that notebook only. A code cell whose first line is
``# NBVAL_CHECK_OUTPUT`` has its output compared by nbval on every test run: the notebook carries that as
the cell's ``nbval-check-output`` tag (nbval reads either), so the students reading the code never see it.
"""
from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SOURCES = NOTEBOOKS / "src"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
BEGIN, END, STUB = "### BEGIN SOLUTION", "### END SOLUTION", "### STUB "
ONLY = {"stub": "stub-only", "solution": "solution-only"}
CHECK_MARKER, CHECK_TAG = "# NBVAL_CHECK_OUTPUT", "nbval-check-output"


def variant(source: str, which: str) -> str:
    """The code of ``which`` ("stub" or "solution") from a cell's source with the markers above."""
    lines, inside = [], False
    for line in source.splitlines():
        text, indent = line.strip(), line[: len(line) - len(line.lstrip())]
        if text in (BEGIN, END):
            inside = text == BEGIN
        elif text.startswith(STUB):
            if which == "stub":
                lines.append(indent + text[len(STUB):])
        elif not (inside and which == "stub"):
            lines.append(line)
    return "\n".join(lines)


def cells_of(source: Path, which: str | None = None) -> list[nbformat.NotebookNode]:
    """The cells of a source file; ``which`` = "stub"/"solution" for an exercise source, None for a tutorial."""
    notebook = jupytext.read(source, fmt="py:percent")
    cells = []
    for cell in notebook.cells:
        tags = set(cell.metadata.get("tags", []))
        if which is not None and tags & (set(ONLY.values()) - {ONLY[which]}):
            continue
        text = cell.source.strip()
        if cell.cell_type == "markdown":
            cells.append(nbformat.v4.new_markdown_cell(text))
        elif cell.cell_type == "code":
            code = variant(text, which).strip() if which else text
            checked = code.startswith(CHECK_MARKER)
            cells.append(nbformat.v4.new_code_cell(code[len(CHECK_MARKER):].strip() if checked else code))
            if checked:
                cells[-1].metadata["tags"] = [CHECK_TAG]
    return cells


def targets() -> dict[Path, tuple[Path, str | None]]:
    """Every notebook the sources make: {notebook path: (source, variant)}."""
    made = {}
    for source in sorted(SOURCES.glob("[0-9][0-9]-*.py")):
        made[NOTEBOOKS / f"{source.stem}.ipynb"] = (source, None)
    for source in sorted((SOURCES / "exercises").glob("[0-9][0-9]-*.py")):
        made[NOTEBOOKS / "exercises" / f"{source.stem}.ipynb"] = (source, "stub")
        made[NOTEBOOKS / "exercises" / "solutions" / f"{source.stem}-solutions.ipynb"] = (source, "solution")
    return made


def notebook_of(source: Path, which: str | None = None) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook(cells=cells_of(source, which))
    notebook.metadata["kernelspec"] = KERNELSPEC
    notebook.metadata["language_info"] = {"name": "python"}
    for index, cell in enumerate(notebook.cells):
        cell.id = f"cell-{index}"  # stable ids: regenerating a notebook gives a small diff
    return notebook
