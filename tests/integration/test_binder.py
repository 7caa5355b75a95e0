"""Binder: the config renders, and installing exactly binder/requirements.txt runs a tutorial.

mybinder.org builds an image with repo2docker: Python from binder/runtime.txt, then
``pip install -r binder/requirements.txt`` in the repository root. The slow test below does the
same pip step into a fresh virtual environment (plus the Jupyter kernel and client that Binder's
base image already has) and runs the quickstart notebook there, in a folder outside the
repository so the installed package, not the source tree, is imported.
"""
import os
import re
import shutil
import subprocess
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINDER = ROOT / "binder"


def requirement_lines() -> list[str]:
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_requirements_install_cpu_torch_then_the_package():
    lines = requirement_lines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    torch_pins = [line for line in lines if line.startswith("torch")]
    assert torch_pins == ["torch==2.13.0+cpu"], "one pinned CPU build of torch"
    makefile_pin = re.search(r"^TORCH_SPEC\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    assert torch_pins[0] == makefile_pin, "Binder and `make setup` should install the same torch"
    assert lines[-1] == ".[export]", "the repository itself (with the export extra, for tutorial 04) installs last, " \
        "so its dependencies come from PyPI"


def test_runtime_is_a_python_the_package_supports():
    runtime = (BINDER / "runtime.txt").read_text().strip()
    match = re.fullmatch(r"python-(\d+)\.(\d+)", runtime)
    assert match, f"runtime.txt should read python-X.Y, got {runtime!r}"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(part) for part in re.fullmatch(r">=(\d+)\.(\d+)", requires).groups())
    assert tuple(int(part) for part in match.groups()) >= minimum


def test_repo2docker_renders_the_config(tmp_path):
    r2d = shutil.which("jupyter-repo2docker") or shutil.which("repo2docker")
    if r2d is None:
        pytest.skip("jupyter-repo2docker is not installed here (it needs Docker to be useful); "
                    "the requirements and runtime files are checked by the tests above")
    result = subprocess.run([r2d, "--no-build", "--no-run", "--debug", str(ROOT)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    dockerfile = result.stdout + result.stderr  # --debug prints the Dockerfile it would build
    assert 'pip install --no-cache-dir -r "binder/requirements.txt"' in dockerfile
    version = (BINDER / "runtime.txt").read_text().strip().removeprefix("python-")
    assert f"python={version}" in dockerfile


@pytest.mark.slow
def test_fresh_install_from_binder_requirements_runs_the_quickstart(tmp_path):
    notebook = ROOT / "notebooks" / "00-quickstart.ipynb"
    if not notebook.exists():
        pytest.skip("notebooks/00-quickstart.ipynb is not written yet")
    env_dir = tmp_path / "binder-venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # No network here: pip gets torch and the rest from the local wheel cache and mirror, so the
    # PyTorch index in the file can only time out; fail fast on it instead of retrying.
    env = {**os.environ, "PIP_RETRIES": "0", "PIP_TIMEOUT": "5", "PIP_NO_COMPILE": "1"}
    env.pop("KDNB_PLOT", None)
    install = subprocess.run([python, "-m", "pip", "install", "-q", "-r", str(BINDER / "requirements.txt"),
                              "ipykernel", "nbclient"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]

    work = tmp_path / "run"
    work.mkdir()
    shutil.copy(notebook, work / notebook.name)
    probe = subprocess.run([python, "-c", "import kdnb, torch; print(kdnb.__file__, torch.__version__)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert str(env_dir) in probe.stdout and "+cpu" in probe.stdout, probe.stdout + probe.stderr
    run = subprocess.run([env_dir / "bin" / "jupyter-execute", "--timeout=300", notebook.name],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
