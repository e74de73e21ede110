"""The package's import graph: no cycle (function-local imports count), and the caller side
never imports the node side (tests/integration/test_caller_imports.py checks what a caller
process really loads)."""

from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

PACKAGE = "snakepit_tasks"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE
#: Top-level programs that may start or inspect nodes in-process.
NODE_USERS = {f"{PACKAGE}.cli", f"{PACKAGE}.commands.doctor"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        if "_proto" in path.parts:
            continue
        found[module_name(path)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules ``name`` imports anywhere (functions included, TYPE_CHECKING not)."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                target = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                target = node.module or ""
            found.add(target)
            for alias in node.names:
                found.add(f"{target}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    # A module's own parent packages are already imported when it runs: not an edge.
    parts_of_name = name.split(".")
    ancestors = {".".join(parts_of_name[:i]) for i in range(1, len(parts_of_name))}
    resolved = set()
    for target in found:
        # Importing a.b.c runs a/__init__ and a/b/__init__ too.
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            candidate = ".".join(parts[:i])
            if candidate in known and candidate != name:
                resolved.add(candidate)
    return resolved - ancestors - {PACKAGE}  # the root package imports nothing eagerly


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def connect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def test_the_walker_sees_function_local_and_relative_imports(tmp_path: Path) -> None:
    known = {f"{PACKAGE}.a", f"{PACKAGE}.b", f"{PACKAGE}.node", f"{PACKAGE}.node.x"}
    source = tmp_path / "a.py"
    source.write_text(textwrap.dedent("""
        from typing import TYPE_CHECKING
        from . import b
        def f():
            from .node import x
        if TYPE_CHECKING:
            from .node import nothing
    """))
    assert imports_of(f"{PACKAGE}.a", source, known) == {
        f"{PACKAGE}.b", f"{PACKAGE}.node", f"{PACKAGE}.node.x"
    }
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    found = cycles(graph())
    assert not found, "import cycles (move the shared piece down a layer): " + "; ".join(
        " <-> ".join(c) for c in found
    )


def test_the_caller_side_never_imports_the_node_side() -> None:
    offenders = {
        name: sorted(t for t in targets if t.startswith(f"{PACKAGE}.node"))
        for name, targets in graph().items()
        if not name.startswith(f"{PACKAGE}.node") and name not in NODE_USERS
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"caller-side modules importing node code: {offenders}"


def test_every_subpackage_is_in_the_distribution() -> None:
    """pyproject lists packages by name: a new subpackage must be listed or wheels lose it."""
    import tomllib

    listed = set(tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["tool"][
        "setuptools"]["packages"])
    found = {module_name(p.parent) for p in ROOT.rglob("__init__.py")}
    assert found <= listed, f"missing from [tool.setuptools] packages: {sorted(found - listed)}"
