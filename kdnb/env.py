"""The ground floor's environment questions, each asked in one place so every layer agrees:
which version is installed, are we in a notebook kernel, is ipywidgets installed, is plotting on.

Nothing here imports IPython, ipywidgets or matplotlib unless the question needs it.
"""
from __future__ import annotations

import os
import sys
from importlib import metadata
from types import ModuleType

INSTALL_HINT = "pip install 'ipywidgets>=8' (then restart the kernel)"
_OFF = ("0", "false", "off", "no")


def version(package: str = "kdnb") -> str:
    """The installed version of ``package`` (kdnb's own is written once, in pyproject.toml)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def plotting_enabled() -> bool:
    """False when the environment variable ``KDNB_PLOT`` is 0/false/off/no: no live chart anywhere.
    (Read at each call, so setting it in a running kernel takes effect.)"""
    return os.environ.get("KDNB_PLOT", "1").strip().lower() not in _OFF


def in_kernel() -> bool:
    """True inside a Jupyter kernel (JupyterLab, Notebook, VS Code, Colab, nbconvert), where images show."""
    if "IPython" not in sys.modules:  # never import IPython just to ask
        return False
    shell = sys.modules["IPython"].get_ipython()
    return any(cls.__name__ == "ZMQInteractiveShell" for cls in type(shell).__mro__)


def ipywidgets_or_none() -> ModuleType | None:
    """The ipywidgets module, or None when it is not installed."""
    try:
        import ipywidgets
    except ImportError:
        return None
    return ipywidgets
