"""Execute a notebook in a fresh kernel of this interpreter and save it with its outputs."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient


def execute(notebook: nbformat.NotebookNode, path: Path, timeout: int = 600) -> float:
    """Run ``notebook`` top to bottom (in ``path``'s folder) and save it with its outputs to ``path``."""
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
