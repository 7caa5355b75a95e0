"""Execute a notebook in a fresh kernel of this interpreter and save it with its outputs.

The saved file reads as a finished report in any viewer (JupyterLab before running, GitHub, nbviewer):
a widget's output keeps only its static fallbacks (a progress bar's final text line, an explorer's
picture and numbers), because the live widget cannot be shown without its kernel ("Error displaying
widget: model not found"). Running the notebook replaces them with live widgets.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def execute(notebook: nbformat.NotebookNode, path: Path, timeout: int = 600) -> float:
    """Run ``notebook`` top to bottom (in ``path``'s folder) and save it with its outputs to ``path``."""
    km = KernelManager(kernel_name="python3")
    km.kernel_cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    client = NotebookClient(notebook, km=km, timeout=timeout, record_timing=False,  # no timestamps: small diffs
                            resources={"metadata": {"path": str(path.parent)}})
    started = time.perf_counter()
    with client.setup_kernel(stderr=subprocess.DEVNULL):
        # language_info as the kernel reports it, which is what a frontend writes back on opening the notebook:
        # saved as it will be, opening a committed notebook leaves it unchanged
        notebook.metadata["language_info"] = client.wait_for_reply(client.kc.kernel_info())["content"]["language_info"]
        for index, cell in enumerate(notebook.cells):
            client.execute_cell(cell, index)
    elapsed = time.perf_counter() - started
    # The widgets' live state is not kept (the static outputs are), but the empty state JupyterLab and Notebook 7
    # write when they save a notebook whose widgets are not running is, so opening and saving changes nothing.
    notebook.metadata["widgets"] = {WIDGET_STATE: {"state": {}, "version_major": 2, "version_minor": 0}}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data and len(data) > 1:
                del data[WIDGET_VIEW]
    nbformat.write(notebook, path)
    return elapsed
