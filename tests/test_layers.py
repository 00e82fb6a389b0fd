"""The two layers of `fourdvar`: the engine stands alone, the application builds on it.

Imports are read from the source with :mod:`ast` (every ``import`` statement, those
inside functions included), so a late import cannot hide a dependency.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fourdvar"
APP = PACKAGE / "app"

#: What the engine must never need: the application's file formats, terminal and plots.
APPLICATION_ONLY = {"yaml", "xarray", "netCDF4", "matplotlib", "dask", "distributed", "argparse"}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: pathlib.Path) -> set[str]:
    """Absolute names of every module ``path`` imports, relative imports resolved."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def engine_files() -> list[pathlib.Path]:
    return [path for path in PACKAGE.glob("*.py") if path.name != "__main__.py"]


def test_the_import_reader_resolves_relative_imports(tmp_path, monkeypatch):
    """Negative control: the reader sees `..app` from inside the package and a late import
    (a probe module at fourdvar/app/ of a copy of the tree's layout, outside the repository)."""
    source = "def f():\n    from ..app.results import x\nfrom . import checks\n"
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    probe = tmp_path / APP.relative_to(PACKAGE.parent) / "_probe_for_test.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(source)
    names = imported_modules(probe)
    assert "fourdvar.app.results" in names
    assert "fourdvar.app.checks" in names


def test_engine_imports_nothing_from_the_application():
    offenders = {
        module_name(path): sorted(name for name in imported_modules(path) if name == "fourdvar.app" or name.startswith("fourdvar.app."))
        for path in engine_files()
    }
    assert len(offenders) >= 10  # the engine's modules were all read
    assert {module: names for module, names in offenders.items() if names} == {}


def test_engine_imports_no_yaml_netcdf_terminal_or_plots():
    offenders = {
        module_name(path): sorted(name for name in imported_modules(path) if name.split(".")[0] in APPLICATION_ONLY)
        for path in engine_files()
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def test_import_fourdvar_loads_no_application_module():
    code = (
        "import sys, fourdvar\n"
        "heavy = ['fourdvar.app', 'yaml', 'xarray', 'netCDF4', 'matplotlib']\n"
        "print(' '.join(name for name in heavy if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == ""


def test_python_dash_m_fourdvar_is_the_command_line():
    result = subprocess.run([sys.executable, "-m", "fourdvar", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("fourdvar ")


def package_graph() -> dict[str, set[str]]:
    """Module -> the `fourdvar` modules it imports (late imports included)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py") if path.name != "__main__.py"}
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_modules(path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and name not in ("fourdvar", "fourdvar.app"):
                targets.add(name)
        graph[module] = targets
    return graph


def cycles_of(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle found by depth-first search (empty: the imports form a DAG)."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles_of({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles_of({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles_in_the_package():
    graph = package_graph()
    assert {"fourdvar.app.plan", "fourdvar.app.run", "fourdvar.app.results", "fourdvar.cost"} <= set(graph)
    assert "fourdvar.app.plan" in graph["fourdvar.app.results"]  # the late import is seen
    assert cycles_of(graph) == []
