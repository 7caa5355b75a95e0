"""Run each tutorial notebook headless, as a student's Binder session would, and report its cost.

For every notebook: wall time from kernel start to the last cell, and the kernel process's peak
resident memory (Linux: VmHWM from /proc/<pid>/status, the kernel's own high-water mark; elsewhere
the largest RSS psutil sees after any cell). Budgets (DESIGN.md, issue 6): each tutorial <= 60 s
on 2 cores and <= 1.5 GB peak RSS, since Binder gives 1-2 GB and one slow CPU.

    .venv/bin/python bench/notebooks.py                 # notebooks/*.ipynb
    .venv/bin/python bench/notebooks.py --all           # plus notebooks/exercises/
    .venv/bin/python bench/notebooks.py notebooks/01-distillation.ipynb

The kernel is this interpreter's (the venv's), as with nbval's --nbval-current-env. Notebooks are
executed in memory and never rewritten. The last line is the worst notebook's share of each budget.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
import report  # bench/report.py: this script's folder is on sys.path

ROOT = Path(__file__).resolve().parent.parent
TIME_BUDGET_S = 60.0
RSS_BUDGET_MB = 1536.0


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set size so far (VmHWM), or None where /proc is missing."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB -> MB
    return None


def current_rss_mb(pid: int) -> float:
    import psutil  # only off Linux; a dependency of IPython, so always present in the venv

    return psutil.Process(pid).memory_info().rss / 2**20


def run(path: Path, timeout: int = 600) -> tuple[float, float]:
    """Execute ``path`` in a fresh kernel of this interpreter; return (wall seconds, peak RSS MB)."""
    nb = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name="python3")
    # "python" in the kernelspec resolves to sys.executable, but say it outright: the venv's kernel.
    km.kernel_cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    client = NotebookClient(nb, km=km, timeout=timeout, resources={"metadata": {"path": str(path.parent)}})
    sampled = 0.0
    start = time.perf_counter()
    # the kernel's own stderr carries only start-up chatter; cell errors come back as outputs
    with client.setup_kernel(stderr=subprocess.DEVNULL):
        pid = km.provisioner.pid
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
            if peak_rss_mb(pid) is None:
                sampled = max(sampled, current_rss_mb(pid))
        wall = time.perf_counter() - start
        peak = peak_rss_mb(pid) or sampled
    return wall, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks to run (default: the tutorials)")
    parser.add_argument("--all", action="store_true", help="also run notebooks/exercises/")
    args = parser.parse_args()
    paths = args.paths or sorted((ROOT / "notebooks").glob("*.ipynb"))
    if args.all:
        paths += sorted((ROOT / "notebooks" / "exercises").glob("*.ipynb"))
    if not paths:
        print("no notebooks found under notebooks/")
        return 1

    width = max(len("notebook"), *(len(p.name) for p in paths))
    print(f"{'notebook'.ljust(width)}  {'wall s':>7}  {'peak RSS MB':>11}  budget")
    print(f"{'-' * width}  {'-' * 7}  {'-' * 11}  ------")
    worst_time = worst_rss = 0.0
    failed = []
    for path in paths:
        try:
            wall, peak = run(path)
        except Exception as error:  # a failing cell: report it and go on with the others
            failed.append(path.name)
            print(f"{path.name.ljust(width)}  FAILED: {type(error).__name__}: {str(error).splitlines()[-1][:80]}")
            continue
        ok = wall <= TIME_BUDGET_S and peak <= RSS_BUDGET_MB
        print(f"{path.name.ljust(width)}  {wall:7.1f}  {peak:11.0f}  {'ok' if ok else 'OVER'}", flush=True)
        worst_time, worst_rss = max(worst_time, wall / TIME_BUDGET_S), max(worst_rss, peak / RSS_BUDGET_MB)
    if failed:
        print(f"failed: {', '.join(failed)}")
    print(f"worst share of budget: time {worst_time:.2f} of {TIME_BUDGET_S:.0f} s, "
          f"memory {worst_rss:.2f} of {RSS_BUDGET_MB:.0f} MB")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(report.run(main, modes=("--all",)))
