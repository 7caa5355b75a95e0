"""bench/report.py: each bench replaces its own section of docs/benchmarks.md with what it printed."""
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture()
def report(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("report", BENCH / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "BENCHMARKS", tmp_path / "benchmarks.md")
    return module


def test_a_section_is_appended_once_then_replaced_between_its_markers(report, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["loop_overhead.py", "--rounds", "3"])
    report.BENCHMARKS.write_text("# Benchmarks\n\nintro kept\n")
    report.write_section(BENCH / "loop_overhead.py", "ratio 1.10\n")
    report.write_section(BENCH / "chart_overhead.py", "ratio 1.04\n")
    report.write_section(BENCH / "loop_overhead.py", "ratio 1.02\n")
    text = report.BENCHMARKS.read_text()
    assert text.startswith("# Benchmarks\n\nintro kept\n")
    assert text.count("<!-- bench:loop_overhead.py start -->") == 1 and "ratio 1.10" not in text
    assert text.index("ratio 1.02") < text.index("ratio 1.04")  # replaced where it stood, not moved to the end
    assert "`python bench/loop_overhead.py --rounds 3`" in text and "cores, torch " in text and "load average" in text
    assert "hand-written PyTorch loop" in text  # what the bench measures: its docstring's first line


def test_each_mode_writes_its_own_section(report):
    argv = ["--part", "pattern", "--seeds", "9", "--regime", "a", "b"]
    assert report.mode_of(argv, ("--part",)) == "--part pattern"
    assert report.mode_of(argv, ("--regime", "--net")) == "--regime a b"
    assert report.mode_of(argv, ("--net",)) is None
    report.write_section(BENCH / "prune_oneshot.py", "whole run")
    report.write_section(BENCH / "prune_oneshot.py", "pattern only", part="--part pattern")
    text = report.BENCHMARKS.read_text()
    assert "whole run" in text and "## bench/prune_oneshot.py --part pattern" in text


def test_no_write_prints_and_leaves_the_file_alone(report, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["prune_speed.py", "--no-write"])

    def main():
        assert sys.argv == ["prune_speed.py"]  # the bench's own parser never sees the flag
        print("speed-up 6.85x")
        return 0

    assert report.run(main) == 0
    assert "speed-up 6.85x" in capsys.readouterr().out and not report.BENCHMARKS.exists()


def test_a_run_writes_what_main_printed(report, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["prune_speed.py"])
    monkeypatch.setattr(sys.modules["__main__"], "__file__", str(BENCH / "prune_speed.py"), raising=False)
    report.run(lambda: print("speed-up 6.85x"))
    assert "speed-up 6.85x" in capsys.readouterr().out
    assert "```text\nspeed-up 6.85x\n```" in report.BENCHMARKS.read_text()
