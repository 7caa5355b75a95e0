"""The environment questions, asked in one place (kdnb.env) for every layer."""
import tomllib
from pathlib import Path

import pytest

import kdnb
from kdnb import env


def test_the_version_has_one_source_pyproject():
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert kdnb.__version__ == env.version() == pyproject["project"]["version"]
    assert env.version("no-such-package-kdnb") == "unknown (not installed)"


@pytest.mark.parametrize("value, enabled", [("0", False), ("off", False), (" False ", False), ("no", False),
                                            ("1", True), ("yes", True), ("", True)])
def test_kdnb_plot_is_parsed_in_one_place(monkeypatch, value, enabled):
    monkeypatch.setenv("KDNB_PLOT", value)
    assert env.plotting_enabled() is enabled


def test_no_kernel_in_a_test_process_and_widgets_are_found():
    assert env.in_kernel() is False
    assert env.ipywidgets_or_none() is not None  # a dependency of kdnb
