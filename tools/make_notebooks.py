"""Generate the tutorial and exercise notebooks (notebooks/) from their sources (notebooks/src/) and
execute them, saving their outputs.

    .venv/bin/python tools/make_notebooks.py              # all of them (what `make notebooks` runs)
    .venv/bin/python tools/make_notebooks.py 01 exercises # those whose path contains "01" or "exercises"
    .venv/bin/python tools/make_notebooks.py --no-run     # write only (cells, no outputs)

Rerun it after editing a source or changing what kdnb prints: tests/integration/test_notebooks.py fails when a
committed notebook's cells differ from its source, and nbval compares the cells tagged `nbval-check-output`
(a source cell that starts with `# NBVAL_CHECK_OUTPUT`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nbgen import execute  # noqa: E402
from nbsource import NOTEBOOKS, notebook_of, targets  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="substrings of the notebook paths to build")
    parser.add_argument("--no-run", action="store_true", help="write the notebooks without executing them")
    args = parser.parse_args()
    for path, (source, which) in targets().items():
        name = str(path.relative_to(NOTEBOOKS))
        if args.only and not any(part in name for part in args.only):
            continue
        notebook = notebook_of(source, which)
        path.parent.mkdir(parents=True, exist_ok=True)
        if args.no_run:
            nbformat.write(notebook, path)
            print(f"wrote {name}")
            continue
        print(f"{name}: executed in {execute(notebook, path):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
