"""Each bench writes what it printed into its own section of docs/benchmarks.md, with the command line, the date and
the machine, so the numbers the docs quote are the numbers a run printed (DESIGN.md: measured numbers live there).

A bench ends with ``report.run(main)`` instead of ``main()``: what ``main`` prints still goes to the terminal and,
once it returns, replaces the section between the bench's markers: one section per script, or per mode for a script
whose modes measure different things (``report.run(main, modes=("--part",))``: ``--part pattern`` writes the section
``prune_oneshot.py --part pattern``). ``--no-write`` on the command line is a dry run: printed, not written.
"""
from __future__ import annotations

import ast
import contextlib
import datetime
import io
import os
import platform
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
DRY_RUN_FLAG = "--no-write"


def machine() -> str:
    """CPU model, cores, torch and its thread count, ATEN_CPU_CAPABILITY when set, GPU when present, and the load."""
    import torch

    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    threads = torch.get_num_threads()
    parts = [model, f"{os.cpu_count()} cores", f"torch {torch.__version__} ({threads} thread{'s' * (threads > 1)})"]
    if os.environ.get("ATEN_CPU_CAPABILITY"):
        parts.append(f"ATEN_CPU_CAPABILITY={os.environ['ATEN_CPU_CAPABILITY']}")
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    parts.append("load average " + " ".join(f"{load:.2f}" for load in os.getloadavg()))  # how busy the box was
    return ", ".join(parts)


def write_section(script: str | Path, printed: str, part: str | None = None, path: Path | None = None) -> Path:
    """Replace the section of ``script`` (``part``: one of its modes) in ``path`` with what the script measures (its
    docstring's first line), the command line, the date, the machine and ``printed``; a new section is appended."""
    path = path or BENCHMARKS
    name = Path(script).name + (f" {part}" if part else "")
    start, end = f"<!-- bench:{name} start -->", f"<!-- bench:{name} end -->"
    command = shlex.join(["python", f"bench/{Path(script).name}",
                          *(arg for arg in sys.argv[1:] if arg != DRY_RUN_FLAG)])
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    what = (ast.get_docstring(ast.parse(Path(script).read_text())) or "").split("\n\n")[0].replace("\n", " ")
    section = (f"{start}\n## bench/{name}\n\n{what}\n\n`{command}`, {when}; {machine()}\n\n"
               f"```text\n{printed.strip()}\n```\n{end}")
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[:text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
    return path


class _Tee(io.TextIOBase):
    """Passes what is printed through to the terminal and keeps a copy."""

    def __init__(self, terminal):
        self.terminal, self.copy = terminal, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.terminal.write(text)

    def flush(self) -> None:
        self.terminal.flush()


def mode_of(argv: list[str], modes: tuple[str, ...]) -> str | None:
    """The options of ``modes`` present in ``argv``, each with the values that follow it (``--regime a b``)."""
    words: list[str] = []
    for i, arg in enumerate(argv):
        if arg in modes:
            words.append(arg)
            for value in argv[i + 1:]:
                if value.startswith("--"):
                    break
                words.append(value)
    return " ".join(words) or None


def run(main: Callable[[], object], modes: tuple[str, ...] = ()) -> object:
    """Run a bench's ``main``, then write what it printed into its section (unless ``--no-write`` was given)."""
    write = DRY_RUN_FLAG not in sys.argv
    if not write:
        sys.argv.remove(DRY_RUN_FLAG)  # the bench's own argument parser never sees it
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        result = main()
    if write:
        # a bench that starts an IPython shell replaces __main__ by one without __file__: then the command line's
        script = getattr(sys.modules["__main__"], "__file__", None) or sys.argv[0]
        print(f"written to {write_section(script, tee.copy.getvalue(), mode_of(sys.argv[1:], modes))}")
    return result
