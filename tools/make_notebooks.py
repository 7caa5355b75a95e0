"""Generate the tutorial and exercise notebooks (notebooks/) and execute them, saving their outputs.

    .venv/bin/python tools/make_notebooks.py              # all of them
    .venv/bin/python tools/make_notebooks.py 01 exercises # those whose path contains "01" or "exercises"
    .venv/bin/python tools/make_notebooks.py --no-run     # write only

Rerun it after any change to kdnb that changes what a notebook prints: the cells marked
`# NBVAL_CHECK_OUTPUT` are compared by nbval on every test run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nbgen import execute, write  # noqa: E402
from tutorials import TUTORIALS  # noqa: E402
from exercises import EXERCISES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "notebooks"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="substrings of the notebook paths to build")
    parser.add_argument("--no-run", action="store_true", help="write the notebooks without executing them")
    args = parser.parse_args()
    notebooks = {**TUTORIALS, **EXERCISES}
    for name, cells in notebooks.items():
        if args.only and not any(part in name for part in args.only):
            continue
        path = ROOT / name
        write(path, cells)
        if args.no_run:
            print(f"wrote {name}")
            continue
        print(f"{name}: executed in {execute(path):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
