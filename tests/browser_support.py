"""JupyterLab and headless Chromium for the browser test (tests/test_browser.py).

`JupyterLab` runs a server on a free loopback port with a random token and throwaway config, data,
runtime and IPython dirs. The venv's kernelspec and lab extensions (jupyterlab_widgets) stay visible
because Jupyter always searches ``sys.prefix/share/jupyter`` after the user dirs.
`Notebook` drives one open notebook through the lab's own commands (``window.jupyterapp``, exposed
with ``--LabApp.expose_app_in_browser``) and reads results back from the DOM.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
WIDGET_MANAGER = "@jupyter-widgets/jupyterlab-manager:plugin"
PACKAGE_OVERRIDES = Path(__file__).resolve().parents[1] / "jupyter-config" / "overrides.d" / "kdnb.json"

# Lab user settings for a test run: every cell attached to the DOM (no windowing), and no news
# or update check (they would reach for the network and pop a toast over the notebook).
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}


def find_chromium() -> str | None:
    """Debian's Chromium: /usr/bin/chromium, else `chromium` on PATH."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class JupyterLab:
    """``python -m jupyter lab`` serving ``root_dir``; its own dirs live under ``home``.

    Its kernels are started in their own sessions (jupyter_client does that), so `stop` shuts
    them down through the REST API first, then ends the server's process group, then any kernel
    still alive whose command line names this server's runtime dir.
    """

    def __init__(self, root_dir: Path, home: Path):
        self.root_dir, self.home = Path(root_dir), Path(home)
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = self.home / "jupyterlab.log"
        self.runtime_dir = self.home / "runtime"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> None:
        config_dir = self.home / "config"
        for name, settings in LAB_SETTINGS.items():
            path = config_dir / "lab" / "user-settings" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(settings))
        # The settings defaults the package installs (pyproject's data-files: widget state saved with the
        # notebook), as `pip install` places them in sys.prefix/share/jupyter/lab/settings, for JupyterLab and
        # Notebook 7 alike, whether or not this environment was installed before they existed.
        app_settings = self.home / "app-settings" / "overrides.d"
        app_settings.mkdir(parents=True, exist_ok=True)
        shutil.copy(PACKAGE_OVERRIDES, app_settings / PACKAGE_OVERRIDES.name)
        env = dict(os.environ)
        env.pop("KDNB_PLOT", None)  # tests/conftest.py turns the chart off; the browser test needs it on
        env.update(
            JUPYTER_CONFIG_DIR=str(config_dir),
            JUPYTER_DATA_DIR=str(self.home / "data"),
            JUPYTER_RUNTIME_DIR=str(self.runtime_dir),
            IPYTHONDIR=str(self.home / "ipython"),
            PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            PYDEVD_DISABLE_FILE_VALIDATION="1",
        )
        command = [
            sys.executable, "-m", "jupyter", "lab", "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root_dir}",
            "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
            f"--LabApp.app_settings_dir={app_settings.parent}",
            f"--JupyterNotebookApp.app_settings_dir={app_settings.parent}",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")  # CI containers run as root
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=self.root_dir, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.api("GET", "/api/status")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not serve on {self.base} within {timeout:.0f} s:\n{self.log_tail()}")

    def api(self, method: str, path: str) -> Any:
        request = urllib.request.Request(self.base + path, method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def url(self, path: str) -> str:
        """The notebook's URL in a fresh workspace (``reset``: no tabs restored from an earlier page)."""
        return f"{self.base}/lab/tree/{path}?reset&token={self.token}"

    def notebook7_url(self, path: str) -> str | None:
        """The notebook's URL in Notebook 7, or None when the notebook package is not installed."""
        import importlib.util

        return f"{self.base}/notebooks/{path}?token={self.token}" if importlib.util.find_spec("notebook") else None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self.api("POST", "/api/shutdown")  # shuts its kernels down, then the server
                self.process.wait(timeout=15)
            except (urllib.error.URLError, ConnectionError, subprocess.TimeoutExpired):
                pass
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(timeout=wait)
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        self._kill_orphan_kernels()
        self.process = None

    def _kill_orphan_kernels(self) -> None:
        import psutil

        marker = str(self.runtime_dir)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if any(marker in part for part in proc.info["cmdline"] or ()):
                try:
                    proc.kill()
                except psutil.Error:
                    pass


# Page-side helpers. `window.__kdnb` holds the test's state in the page.
OPEN_NOTEBOOK_JS = """async ([path, plugin]) => {
  const app = window.jupyterapp;
  await app.started;
  await app.restored;
  const panel = await app.commands.execute('docmanager:open', {path, factory: 'Notebook'});
  await panel.context.ready;
  await panel.sessionContext.ready;
  app.shell.activateById(panel.id);
  window.__kdnb = {panel, srcs: [], run: null};
  return {id: panel.id, widgetManager: app.hasPlugin(plugin) && app.isPluginActivated(plugin),
          installed: app.hasPlugin(plugin)};
}"""

KERNEL_IDLE_JS = """() => {
  const kernel = window.__kdnb.panel.sessionContext.session?.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""

# Record every src an <img> takes inside a cell's outputs: the cell's index, which of its outputs
# (a display handle updates its output in place, at the same index), the kind of image ("widget": an
# ipywidgets Image, <img class="widget-image">; "output": an image/png output of the cell itself,
# which a saved notebook keeps) and whether the cell was still running (its prompt shows [*]).
# A MutationObserver sees each change, however short-lived, which polling from Python could miss.
WATCH_IMAGES_JS = """() => {
  const state = window.__kdnb, content = state.panel.content;
  const record = (img) => {
    const cellNode = img.closest('.jp-Cell');
    const cell = content.widgets.findIndex((widget) => widget.node === cellNode);
    if (cell < 0 || !img.getAttribute('src')) return;
    const kind = img.classList.contains('widget-image') ? 'widget'
      : (img.closest('.jp-RenderedImage') && !img.closest('.jupyter-widgets')) ? 'output' : null;
    const child = img.closest('.jp-OutputArea-child');
    if (!kind || !child) return;
    const output = Array.prototype.indexOf.call(child.parentElement.children, child);
    const prompt = cellNode.querySelector('.jp-InputPrompt')?.textContent || '';
    state.srcs.push({cell, output, kind, running: prompt.includes('*'), src: img.getAttribute('src'),
                     t: performance.now() / 1000});
  };
  const observer = new MutationObserver((mutations) => {
    for (const m of mutations) {
      if (m.type === 'attributes') { if (m.target.tagName === 'IMG') record(m.target); continue; }
      for (const node of m.addedNodes) {
        if (node.nodeType !== 1) continue;
        if (node.tagName === 'IMG') record(node);
        node.querySelectorAll('img').forEach(record);
      }
    }
  });
  observer.observe(content.node, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
  state.observer = observer;
}"""

RUN_ALL_JS = """() => {
  const state = window.__kdnb;
  state.run = null;
  window.jupyterapp.commands.execute('notebook:run-all-cells').then(
    (ok) => { state.run = {ok: ok !== false}; },
    (error) => { state.run = {ok: false, error: String(error)}; });
}"""

# The saved-notebook view of the outputs (what nbformat would write), per cell.
NOTEBOOK_JSON_JS = "() => window.__kdnb.panel.context.model.toJSON()"

# Run code in the notebook's kernel (not as a cell) and return what it printed and returned.
KERNEL_EXECUTE_JS = """async (code) => {
  const kernel = window.__kdnb.panel.sessionContext.session.kernel;
  const future = kernel.requestExecute({code, silent: false, store_history: false});
  let text = '';
  future.onIOPub = (msg) => {
    const type = msg.header.msg_type, content = msg.content;
    if (type === 'stream') text += content.text;
    if (type === 'execute_result') text += content.data['text/plain'];
    if (type === 'error') text += content.ename + ': ' + content.evalue;
  };
  await future.done;
  return text;
}"""

# Run one cell (the kernel idle, so it starts at once) and return when it was asked to, in the page's clock.
RUN_CELL_JS = """(index) => {
  const state = window.__kdnb, content = state.panel.content;
  content.activeCellIndex = index;
  state.run = null;
  const started = performance.now() / 1000;
  window.jupyterapp.commands.execute('notebook:run-cell').then(
    (ok) => { state.run = {ok: ok !== false}; }, (error) => { state.run = {ok: false, error: String(error)}; });
  return started;
}"""

SAVE_JS = """async () => {
  const panel = window.__kdnb.panel;
  await panel.context.save();
  return panel.context.path;
}"""


class Notebook:
    """One notebook opened in the lab page, driven through the lab's commands."""

    def __init__(self, page: Any, path: str, plugin: str = WIDGET_MANAGER):
        self.page = page
        info = page.evaluate(OPEN_NOTEBOOK_JS, [path, plugin])
        self.panel = page.locator(f"#{info['id']}")
        if not info["widgetManager"]:
            raise AssertionError(f"the ipywidgets manager ({plugin}) is not active in JupyterLab: {info}")
        page.wait_for_function(KERNEL_IDLE_JS, timeout=60_000)

    def sources(self) -> list[str]:
        """The source of each code cell ("" for markdown and raw cells, so indices match the DOM's cells)."""
        return self.page.evaluate("""() => window.__kdnb.panel.content.widgets.map(
          (cell) => cell.model.type === 'code' ? cell.model.sharedModel.getSource() : '')""")

    def cell_index(self, pattern: str) -> int:
        """The first code cell whose source matches the regular expression (``^`` matches at each line)."""
        matches = [i for i, source in enumerate(self.sources()) if re.search(pattern, source, re.MULTILINE)]
        if not matches:
            raise AssertionError(f"no cell matches {pattern!r}")
        return matches[0]

    def cell(self, index: int) -> Any:
        """A locator for the cell's DOM node (the notebook renders every cell; windowing is off)."""
        return self.panel.locator(".jp-Cell").nth(index)

    def outputs(self, index: int) -> Any:
        return self.cell(index).locator(".jp-OutputArea")

    def run_all(self, timeout: float, during: Any = None) -> None:
        """Run all cells and wait until every cell ran and the kernel is idle.

        ``during()`` is called about every 0.25 s while the cells run (e.g. to screenshot a chart).
        """
        self.page.evaluate(WATCH_IMAGES_JS)
        self.page.evaluate(RUN_ALL_JS)
        deadline = time.monotonic() + timeout
        while (run := self.page.evaluate("() => window.__kdnb.run")) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the notebook did not finish within {timeout:.0f} s")
            if during is not None:
                during()
            self.page.wait_for_timeout(250)
        self.page.wait_for_function(KERNEL_IDLE_JS, timeout=30_000)
        if not run["ok"]:
            raise AssertionError(f"Run All Cells stopped early: {run}; errors: {self.errors()}")

    def run_cell(self, index: int, timeout: float) -> float:
        """Run one cell, wait until it ran; returns the page time (s) at which it was started."""
        self.page.evaluate(WATCH_IMAGES_JS)
        started = self.page.evaluate(RUN_CELL_JS, index)
        deadline = time.monotonic() + timeout
        while self.page.evaluate("() => window.__kdnb.run") is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"cell {index} did not finish within {timeout:.0f} s")
            self.page.wait_for_timeout(250)
        self.page.wait_for_function(KERNEL_IDLE_JS, timeout=30_000)
        return started

    def frames(self, index: int) -> list[tuple[float, str]]:
        """(page time, src) of each distinct image one output of the cell showed while the cell ran."""
        seen, frames = set(), []
        for item in self.page.evaluate("() => window.__kdnb.srcs"):
            if item["cell"] == index and item["running"] and item["src"] not in seen:
                seen.add(item["src"])
                frames.append((item["t"], item["src"]))
        return frames

    def shutdown_kernel(self) -> None:
        self.page.evaluate("() => window.__kdnb.panel.sessionContext.shutdown()")

    def image_changes(self, index: int, kind: str | None = None, running: bool | None = None
                      ) -> dict[int, list[str]]:
        """For each output of the cell that showed images, the distinct srcs it showed, in order: of one
        ``kind`` ("widget" or "output"; None: both), and with ``running=True`` only while the cell ran."""
        changes: dict[int, list[str]] = {}
        for seen in self.page.evaluate("() => window.__kdnb.srcs"):
            if seen["cell"] == index and kind in (None, seen["kind"]) and running in (None, seen["running"]):
                srcs = changes.setdefault(seen["output"], [])
                if seen["src"] not in srcs:
                    srcs.append(seen["src"])
        return changes

    def most_changes(self, index: int, kind: str | None = None, running: bool | None = None) -> int:
        """The most distinct images any one output of the cell showed (2 or more: it was redrawn)."""
        return max(map(len, self.image_changes(index, kind, running).values()), default=0)

    def image_log(self, index: int) -> list[tuple[int, str, bool, str]]:
        """(output, kind, running, start of src) for each image change seen in the cell, for failure messages."""
        seen = self.page.evaluate("() => window.__kdnb.srcs")
        return [(s["output"], s["kind"], s["running"], s["src"][:40]) for s in seen if s["cell"] == index]

    def notebook_json(self) -> dict:
        return self.page.evaluate(NOTEBOOK_JSON_JS)

    def kernel(self, code: str) -> str:
        """Run ``code`` in the notebook's kernel (no cell is added) and return its printed and returned text."""
        return self.page.evaluate(KERNEL_EXECUTE_JS, code)

    def save(self) -> None:
        self.page.evaluate(SAVE_JS)

    def text(self) -> str:
        """Everything the notebook shows, as text (cells are all attached: windowing is off)."""
        return self.panel.inner_text()

    def errors(self) -> list[str]:
        """Every error a person would see: error outputs, tracebacks on stderr, broken widgets."""
        found = []
        for i, cell in enumerate(self.notebook_json()["cells"]):
            for output in cell.get("outputs", ()):
                if output["output_type"] == "error":
                    found.append(f"cell {i}: {output['ename']}: {output['evalue']}")
        dom = self.page.evaluate("""() => {
          const texts = [];
          for (const node of window.__kdnb.panel.node.querySelectorAll('.jp-OutputArea-output')) {
            const mime = node.getAttribute('data-mime-type') || '';
            const text = node.innerText || '';
            if (mime === 'application/vnd.jupyter.stderr' && /Traceback|Error\\b/.test(text)) texts.push(text);
            if (/Error displaying widget|Could not render content for/.test(text)) texts.push(text);
          }
          return texts;
        }""")
        return found + [f"DOM: {text[:2000]}" for text in dom]
