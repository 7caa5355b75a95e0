"""The layers of kdnb hold: every import in kdnb/ (module level or inside a function, ``import x``,
``from x import y`` or ``importlib.import_module("x")``) points to the same layer or a lower one.

    kdnb (the package: lazy names only, nothing imports it)
      > magics > api, exercises > widgets, progress > plots > engine > datasets, models > errors, env

- ``exercises`` stands beside ``api``: it grades a student's code with the engine's formulas and is a leaf,
  which nothing else in kdnb imports.
- ``plots`` draws data: from the engine it reads only the results, histories and tables (and registers its
  drawers in ``kdnb.engine.results``); it computes nothing there, so a figure never calls back into pruning.
- A private module (``_name``) is imported only from inside its own package; a private name (``_name``) is never
  imported from another module (what two modules share is public).
- No import circles between kdnb modules, counting the imports inside functions: an import moved into a function
  to dodge a circle is still one.
- The engine hands a result to ``plots`` through ``kdnb.engine.results`` (a registry, filled when the package
  named by ``results.BACKEND`` loads), never by an import.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "kdnb"
LAYERS = [  # top first; a module's layer is that of its longest matching prefix
    ("kdnb",),
    ("kdnb.magics",),
    ("kdnb.api", "kdnb.exercises"),
    ("kdnb.widgets", "kdnb.progress"),
    ("kdnb.plots",),
    ("kdnb.engine",),
    ("kdnb.datasets", "kdnb.models"),
    ("kdnb.errors", "kdnb.env"),
]
PLOTS_MAY_READ = ("kdnb.engine.history", "kdnb.engine.table", "kdnb.engine.results")
LEAVES = ("kdnb.exercises",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer(name: str) -> int:
    matches = [(len(prefix), index) for index, prefixes in enumerate(LAYERS) for prefix in prefixes
               if within(name, prefix)]
    return max(matches)[1]


def imported_from(package: str, node: ast.ImportFrom) -> str:
    """The module a ``from ... import`` in ``package`` reads from, relative imports resolved."""
    base = node.module or ""
    if not node.level:
        return base
    parts = package.split(".")
    return ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))


def imports(name: str) -> list[tuple[int, str]]:
    """(line, kdnb module) for every import in module ``name``, wherever it stands in the file."""
    tree = ast.parse(MODULES[name].read_text(), str(MODULES[name]))
    package = name if is_package(name) else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = imported_from(package, node)
            for alias in node.names:  # `from kdnb import env` imports the module kdnb.env
                submodule = f"{base}.{alias.name}"
                found.append((node.lineno, submodule if submodule in MODULES else base))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return sorted({(line, target) for line, target in found if within(target, "kdnb")})


def private_names(name: str) -> list[str]:
    """``file:line imports module._name`` for every private name that module ``name`` imports from another module."""
    tree = ast.parse(MODULES[name].read_text(), str(MODULES[name]))
    package = name if is_package(name) else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = imported_from(package, node)
        for alias in node.names:
            if within(base, "kdnb") and alias.name.startswith("_") and not alias.name.startswith("__") \
                    and f"{base}.{alias.name}" not in MODULES:
                found.append(f"{os.path.relpath(MODULES[name], ROOT)}:{node.lineno} imports {base}.{alias.name}")
    return found


def import_cycles(modules: dict[str, set[str]]) -> list[list[str]]:
    """The import circles among ``modules`` (module -> the kdnb modules it imports): each strongly connected
    group of two or more modules, or a module importing itself (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(sorted(modules[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, targets = work[-1]
            target = next((t for t in targets if t in modules), None)
            if target is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = stack[stack.index(node):]
                    del stack[stack.index(node):]
                    if len(group) > 1 or node in modules[node]:
                        cycles.append(sorted(group))
            elif target not in index:
                index[target] = low[target] = len(index)
                stack.append(target)
                work.append((target, iter(sorted(modules[target]))))
            elif target in stack:
                low[node] = min(low[node], index[target])
    return cycles


def problems(name: str) -> list[str]:
    """What is wrong with the imports of module ``name``, one line each."""
    wrong = []
    for line, target in imports(name):
        where = f"{os.path.relpath(MODULES[name], ROOT)}:{line} imports {target}"
        private = [part for part in target.split(".") if part.startswith("_")]
        if target == "kdnb":
            wrong.append(f"{where}: the package's lazy names are for users; import the module that defines it")
        elif layer(target) < layer(name):
            wrong.append(f"{where}: an upward import ({LAYERS[layer(name)][0]} is below {LAYERS[layer(target)][0]})")
        elif private and not within(name, target.rpartition("." + private[0])[0]):
            wrong.append(f"{where}: a private module, used from outside its package")
        elif within(name, "kdnb.plots") and within(target, "kdnb.engine") and not (
                target.endswith(".result") or any(within(target, ok) for ok in PLOTS_MAY_READ)):
            wrong.append(f"{where}: plots draws a result's data and computes nothing in the engine")
        elif any(within(target, leaf) and not within(name, leaf) for leaf in LEAVES) and name != "kdnb":
            wrong.append(f"{where}: {target} is a leaf that nothing in kdnb imports")
    return wrong


def test_the_walk_sees_every_kind_of_import():
    targets = {name: {target for _, target in imports(name)} for name in ("kdnb", "kdnb.plots", "kdnb.widgets")}
    assert "kdnb.magics" in targets["kdnb"]  # inside a function
    assert "kdnb.plots.history" in targets["kdnb.plots"]  # `from kdnb.plots import history`: the module
    assert "kdnb.errors" in targets["kdnb.widgets"]  # `from kdnb.errors import KdnbError`
    assert {"kdnb.plots", "kdnb.engine", "kdnb.errors"} <= {LAYERS[layer(name)][0] for name in MODULES}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_downwards(name):
    assert problems(name) == []


def test_no_private_name_is_imported_across_modules():
    assert [line for name in sorted(MODULES) for line in private_names(name)] == []


def test_no_import_circles():
    graph = {name: {target for _, target in imports(name) if target in MODULES} for name in MODULES}
    assert import_cycles(graph) == []


def test_the_circle_and_private_name_checks_fire(tmp_path):
    """A circle through an import inside a function is found, as is a private name imported from a module."""
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"a"}}) == [["a"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
    saved = dict(MODULES)
    try:
        first, second = tmp_path / "first.py", tmp_path / "second.py"
        first.write_text("def f():\n    from kdnb.fake.second import helper\n")
        second.write_text("from kdnb.fake.first import _private\n")
        MODULES.update({"kdnb.fake.first": first, "kdnb.fake.second": second})
        graph = {name: {target for _, target in imports(name) if target in MODULES}
                 for name in ("kdnb.fake.first", "kdnb.fake.second")}
        assert import_cycles(graph) == [["kdnb.fake.first", "kdnb.fake.second"]]
        assert private_names("kdnb.fake.second") == [
            f"{os.path.relpath(second, ROOT)}:1 imports kdnb.fake.first._private"]
    finally:
        MODULES.clear()
        MODULES.update(saved)


def test_the_layer_rules_catch_the_old_upward_imports(tmp_path):
    """Each rule fires on a line of the kind it forbids (the five upward imports this test replaced)."""
    old = {"kdnb.engine.prune.result": "from kdnb.plots.prune import plot_prune",
           "kdnb.plots.prune": "from kdnb.engine.prune.graph.groups import prunable_weights",
           "kdnb.magics": "import kdnb",
           "kdnb.widgets.sparsity": "from kdnb.api import prune",
           "kdnb.datasets": "from kdnb.engine.errors import KdnbError"}
    saved = dict(MODULES)
    try:
        for name, line in old.items():
            path = tmp_path / f"{name}.py"
            path.write_text(f"def f():\n    {line}\n")
            MODULES[name] = path
            assert len(problems(name)) == 1, name
        path = tmp_path / "kdnb.magics.py"
        path.write_text("from kdnb.widgets._support import in_kernel\n")
        MODULES["kdnb.magics"] = path
        assert "private module" in problems("kdnb.magics")[0]
    finally:
        MODULES.clear()
        MODULES.update(saved)


def loaded_after(code: str) -> set[str]:
    """The top-level modules in sys.modules after running ``code`` in a fresh interpreter."""
    script = f"import sys\n{code}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    return set(out.stdout.split())


NOTEBOOK_ONLY = {"matplotlib", "ipywidgets", "IPython"}


def test_the_engine_never_loads_the_notebook_libraries():
    code = ("import importlib, pkgutil, kdnb.engine, kdnb.datasets, kdnb.models\n"
            "for m in pkgutil.walk_packages(kdnb.engine.__path__, 'kdnb.engine.'): importlib.import_module(m.name)")
    assert loaded_after(code) & NOTEBOOK_ONLY == set()


def test_import_kdnb_stays_light():
    assert loaded_after("import kdnb; kdnb.__version__") & (NOTEBOOK_ONLY | {"torch", "numpy"}) == set()


def test_a_result_is_drawn_by_the_drawer_registered_for_its_type():
    """``.plot()`` loads `kdnb.plots` (and matplotlib) only when called; an unregistered type gets a one-line error."""
    code = ("import sys; from kdnb.engine.history import History; h = History(); h.log_step({'loss': 1.0})\n"
            "assert 'kdnb.plots' not in sys.modules and 'matplotlib' not in sys.modules\n"
            "figure = h.plot()\n"
            "from kdnb.engine import results; from kdnb.plots.history import plot_history\n"
            "assert type(figure).__name__ == 'Figure' and results._find(History) is plot_history\n"
            "try:\n    results.draw(object())\nexcept ValueError as error:\n    print('error:', error)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"})
    assert out.stdout.startswith("error: no figure is registered for object")
