"""The dependency rules of the package, read from its imports (function-level imports count).

* no import cycles between amldbg's modules;
* ``amldbg.core`` imports nothing of amldbg outside the core;
* ``amldbg.debugger`` and ``amldbg.logs`` never import each other;
* ``amldbg.diagnostics`` imports only the core (the debugger may use it);
* ``amldbg.cli`` (the developer's command) is imported by nothing in the runtime;
* amldbg never imports ``harness`` (the tests' and benchmarks' helpers), tests or benchmarks.

``amldbg/__init__.py`` re-exports names lazily through a table of module names; that table
is checked against the same rules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "amldbg"

# Which top-level parts each part may import (besides itself and amldbg._version).
ALLOWED = {
    "core": set(),
    "debugger": {"core", "diagnostics"},
    "logs": {"core"},
    "diagnostics": {"core"},
    "hooks": {"core", "debugger", "logs", "diagnostics"},
    "cli": {"core", "debugger", "logs", "diagnostics", "hooks"},
    "": {"core", "debugger", "logs", "diagnostics", "hooks"},  # amldbg/__init__, __main__
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """amldbg modules imported anywhere in the file (also inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the module pkg.sub; `from pkg import name` pkg.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        for target in targets:
            if target in known:
                found.add(target)
    if name == "amldbg":  # the lazy re-export table
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known:
                found.add(node.value)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def part(name: str) -> str:
    pieces = name.split(".")
    return pieces[1] if len(pieces) > 1 and pieces[1] in ALLOWED else ""


def test_the_layout_has_the_parts_the_rules_name() -> None:
    names = set(modules())
    for expected in ("amldbg.core", "amldbg.debugger", "amldbg.logs", "amldbg.hooks",
                     "amldbg.diagnostics", "amldbg.cli"):
        assert expected in names


@pytest.mark.parametrize("name", sorted(modules()))
def test_each_module_imports_only_what_its_part_may(name: str) -> None:
    allowed = ALLOWED[part(name)] | {part(name)}
    if name == "amldbg.__main__":
        allowed = allowed | {"cli"}  # `python -m amldbg` is the command
    for target in sorted(graph()[name]):
        if target == "amldbg._version":
            continue
        assert part(target) in allowed, f"{name} imports {target}"
        if part(target) == "cli":
            assert part(name) == "cli" or name == "amldbg.__main__", f"{name} imports the CLI"


#: The checkout's folders beside the package: helpers of the tests and benchmarks, never
#: shipped, so the package must not import them (not even inside a function).
NOT_SHIPPED = ("harness", "tests", "benchmarks")


@pytest.mark.parametrize("name", sorted(modules()))
def test_the_package_never_imports_the_harness_tests_or_benchmarks(name: str) -> None:
    path = modules()[name]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            tops = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            tops = [(node.module or "").split(".")[0]]
        else:
            continue
        for top in tops:
            assert top not in NOT_SHIPPED, f"{name} imports {top} (line {node.lineno})"


def test_there_are_no_import_cycles() -> None:
    edges = graph()
    # The package amldbg re-exports everything and is imported by nothing inside it.
    for name, targets in edges.items():
        assert "amldbg" not in targets, f"{name} imports the top-level package"
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_rules_would_catch_a_cycle_and_a_forbidden_import(tmp_path: Path) -> None:
    # The reader itself must see function-level and relative imports.
    source = tmp_path / "amldbg" / "logs" / "x.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from amldbg.debugger import remote\n    from . import y\n")
    known = {"amldbg.debugger.remote", "amldbg.logs.y", "amldbg.debugger"}
    global PACKAGE
    saved = PACKAGE
    PACKAGE = tmp_path / "amldbg"
    try:
        found = imports_of("amldbg.logs.x", source, known)
    finally:
        PACKAGE = saved
    assert found == {"amldbg.debugger.remote", "amldbg.logs.y"}
    assert part("amldbg.debugger.remote") not in ALLOWED["logs"]
