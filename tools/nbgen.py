"""Write a notebook from a list of cells and execute it in this interpreter's kernel, saving the outputs.

A cell is ``md("text")`` or ``code("source", check=True)``; ``check`` puts `# NBVAL_CHECK_OUTPUT` on its
first line so nbval compares its (sanitized) output on every test run.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(text.strip())


def code(source: str, check: bool = False) -> nbformat.NotebookNode:
    source = source.strip()
    return nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\n" + source if check else source)


def write(path: Path, cells: list[nbformat.NotebookNode]) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = KERNELSPEC
    notebook.metadata["language_info"] = {"name": "python"}
    for index, cell in enumerate(notebook.cells):
        cell.id = f"cell-{index}"  # stable ids: regenerating a notebook gives a small diff
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return notebook


def execute(path: Path, timeout: int = 600) -> float:
    """Run ``path`` top to bottom in a fresh kernel of this interpreter and save it with its outputs."""
    notebook = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name="python3")
    km.kernel_cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    client = NotebookClient(notebook, km=km, timeout=timeout, record_timing=False,  # no timestamps: small diffs
                            resources={"metadata": {"path": str(path.parent)}})
    started = time.perf_counter()
    with client.setup_kernel(stderr=subprocess.DEVNULL):
        for index, cell in enumerate(notebook.cells):
            client.execute_cell(cell, index)
    elapsed = time.perf_counter() - started
    notebook.metadata.pop("widgets", None)  # widget state is live-only; the static outputs stay
    nbformat.write(notebook, path)
    return elapsed
