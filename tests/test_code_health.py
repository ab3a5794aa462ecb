"""Code health checks that CI runs with the test suite: types, lint, and the docs build."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=ROOT, capture_output=True, text=True, timeout=600)


def require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[test,docs]')")


def writable(cache: str) -> bool:
    """Whether a tool may keep its cache in the checkout (not in one that another user owns,
    such as a CI checkout the fast tests run in as a non-root user)."""
    path = os.path.join(ROOT, cache)
    return os.access(path if os.path.exists(path) else ROOT, os.W_OK)


def test_mypy_strict_is_clean(tmp_path: Path) -> None:
    require("mypy")
    cache = [] if writable(".mypy_cache") else ["--cache-dir", str(tmp_path / "mypy")]
    result = run(sys.executable, "-m", "mypy", "--strict", *cache, "followtheleader")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean() -> None:
    require("ruff")
    cache = [] if writable(".ruff_cache") else ["--no-cache"]
    result = run(sys.executable, "-m", "ruff", "check", *cache, "followtheleader", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr


def test_docs_build_without_warnings(tmp_path: object) -> None:
    require("sphinx")
    result = run(sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", "docs", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------- architecture

PACKAGE = os.path.join(ROOT, "followtheleader")
LAYERS = (
    ("_core",),
    ("_wire",),
    ("_runtime",),
    ("_lan", "_coordinators"),
    ("_options", "_elector", "__init__", "metrics", "aio"),
    ("_cli", "__main__"),
)
"""The package's layers, bottom first: a module imports only from its own layer or below it."""
APART = ("_lan", "_coordinators")
"""The two backends' layers, of the same rank, know nothing of each other."""
CLIENT_LIBRARIES = {"kazoo", "etcd3gw", "requests"}
"""Optional client libraries: the only imports allowed inside a function."""
OPTIONAL_EXTRAS = {"followtheleader.metrics"}
"""Modules of the package that need an optional extra (prometheus-client): the CLI imports them
inside a function, only when asked to (``--metrics-port``)."""
LOADS_DRIVERS = {"followtheleader._coordinators.base"}
"""The one module that imports by a name it reads (a driver's ``module:Class`` from the registry)."""
CORE_MAY_IMPORT = {"__future__", "collections", "dataclasses", "enum", "functools", "itertools", "math", "re", "typing"}
"""Everything the pure core may import from outside the package: no I/O, no clock (``time``,
``datetime``, ``os``), no threads, no randomness. An allow-list, so that nothing slips by."""


@dataclasses.dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    in_function: bool
    type_checking: bool
    """Imported only for type checkers; counted like any other import (the strict choice)."""


def package_modules() -> dict[str, str]:
    """Every module of the package: dotted name -> file."""
    modules = {}
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                relative = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                modules[relative.removesuffix(".__init__")] = path
    return modules


def imports_of(module: str, path: str) -> list[Import]:
    with open(path, encoding="utf-8") as file:
        tree = ast.parse(file.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(Import(module, alias.name, child.lineno, in_function, type_checking))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - child.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                # "from package import module" imports the module, not only the package
                targets = [f"{base}.{alias.name}" for alias in child.names]
                for target in targets:
                    found.append(Import(module, target, child.lineno, in_function, type_checking))
            elif isinstance(child, ast.Call) and ast.unparse(child.func) in ("importlib.import_module", "__import__"):
                # an import by name: a constant is followed like an import statement, any
                # other argument is recorded as "?" (allowed only where plug-ins are loaded)
                argument = child.args[0] if child.args else None
                target = argument.value if isinstance(argument, ast.Constant) else "?"
                found.append(Import(module, str(target), child.lineno, in_function, type_checking))
                visit(child, in_function, type_checking)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, in_function, True)
            else:
                visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef), type_checking)

    visit(tree, False, False)
    return found


def internal(name: str, modules: dict[str, str]) -> str | None:
    """The package module an import names (for ``from X import name``, ``X.name`` if it is a
    module, else ``X``), or None for an outside one."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next(rank for rank, names in enumerate(LAYERS) if top in names)


def all_imports() -> tuple[dict[str, str], list[Import]]:
    modules = package_modules()
    return modules, [i for module, path in sorted(modules.items()) for i in imports_of(module, path)]


def test_every_module_belongs_to_a_layer() -> None:
    modules, _ = all_imports()
    for module in modules:
        layer_of(module)  # raises StopIteration for a module of no layer


def test_no_function_level_imports_but_of_client_libraries() -> None:
    _, imports = all_imports()
    wrong = [
        f"{i.importer}:{i.line} imports {i.imported}"
        for i in imports
        if i.in_function
        and i.imported.split(".")[0] not in CLIENT_LIBRARIES
        and not any(i.imported == m or i.imported.startswith(m + ".") for m in OPTIONAL_EXTRAS)
        and not (i.imported == "?" and i.importer in LOADS_DRIVERS)
    ]
    assert not wrong


def test_dependencies_point_down_the_layers_without_cycles() -> None:
    modules, imports = all_imports()
    graph: dict[str, set[str]] = {module: set() for module in modules}
    upward = []
    for i in imports:
        target = internal(i.imported, modules)
        if target is None or target == i.importer:
            continue
        if target == "followtheleader" and i.importer.startswith("followtheleader."):
            upward.append(f"{i.importer}:{i.line} imports the package itself")
            continue
        graph[i.importer].add(target)
        if layer_of(target) > layer_of(i.importer):
            upward.append(f"{i.importer}:{i.line} imports {target} (a higher layer)")
        tops = {[*module.split("."), ""][1] for module in (i.importer, target)}
        if tops == set(APART):
            upward.append(f"{i.importer}:{i.line} imports {target} (the other backend)")
    assert not upward
    # a cycle shows up as a module reachable from itself
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            assert module != start, f"import cycle through {start}"
            if module not in seen:
                seen.add(module)
                todo.extend(graph[module])


def test_the_core_does_no_io_and_reads_no_clock() -> None:
    _, imports = all_imports()
    wrong = [
        f"{i.importer}:{i.line} imports {i.imported}"
        for i in imports
        if i.importer.startswith("followtheleader._core")
        and i.imported.split(".")[0] not in CORE_MAY_IMPORT
        and not i.imported.startswith("followtheleader._core")
    ]
    assert not wrong


def test_the_architecture_checks_see_what_they_must(tmp_path: Path) -> None:
    """The checks themselves: a clock read by name, a sideways import and a submodule
    imported from its package are all seen."""
    core = tmp_path / "followtheleader" / "_core"
    core.mkdir(parents=True)
    (core / "__init__.py").write_text("")
    (core / "bad.py").write_text("import datetime\nimportlib.import_module('time')\nfrom .. import _lan\n")
    found = {i.imported for i in imports_of("followtheleader._core.bad", str(core / "bad.py"))}
    assert found == {"datetime", "time", "followtheleader._lan"}
