"""snakepit_tasks.keys: every key and queue name, and nobody else builds them."""

from __future__ import annotations

import ast
from pathlib import Path

import snakepit_tasks
from snakepit_tasks import keys

PACKAGE_DIR = Path(snakepit_tasks.__file__).resolve().parent


def test_queue_names() -> None:
    assert keys.pool_queue("default") == "snakepit.pool.default"
    assert keys.node_queue("default@host1") == "snakepit.node.default@host1"
    assert keys.EXCHANGE == "snakepit"


def test_redis_keys() -> None:
    assert keys.pools() == "snakepit:pools"
    assert keys.pool_nodes("p") == "snakepit:pool:p:nodes"
    assert keys.node_lease("p@h") == "snakepit:node:p@h"
    assert keys.node_workers("p@h") == "snakepit:node:p@h:workers"
    assert keys.busy("p@h") == "snakepit:node:p@h:busy"
    assert keys.pool_stats("p") == "snakepit:stats:p"
    assert keys.pool_alive("p") == "snakepit:pool:p:alive"
    assert keys.stream("abc") == "snakepit:stream:abc"
    assert keys.stream_cancel("abc") == "snakepit:stream:abc:cancel"
    assert keys.reader_wake("r1") == "snakepit:reader:r1:wake"
    assert keys.chunk_id(7) == "0-7"


def test_every_key_function_uses_the_prefix() -> None:
    """Each key builder (other than queue names and stream ids) returns a 'snakepit:' key."""
    not_redis_keys = {"pool_queue", "node_queue", "chunk_id"}
    for name, fn in vars(keys).items():
        if not callable(fn) or name.startswith("_") or name in not_redis_keys:
            continue
        if getattr(fn, "__module__", None) != keys.__name__:
            continue
        argc = fn.__code__.co_argcount
        value = fn(*["x"] * argc)
        assert value.startswith(keys.PREFIX + ":"), (name, value)


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _key_literals(source: str, filename: str = "<src>") -> list[tuple[int, str]]:
    """String constants (f-string parts included, docstrings excluded) with 'snakepit:'."""
    tree = ast.parse(source, filename)
    docs = _docstring_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docs
            and "snakepit:" in node.value
        ):
            found.append((node.lineno, node.value))
    return found


def test_key_literal_scan_sees_fstrings_and_skips_docstrings() -> None:
    source = (
        '"""Module doc, wired for snakepit: fine."""\nx = f"snakepit:{y}:z"\nw = "snakepit:pools"\n'
    )
    assert sorted(v for _, v in _key_literals(source)) == ["snakepit:", "snakepit:pools"]


def test_only_keys_module_formats_snakepit_keys() -> None:
    sources = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(sources) > 10
    offenders = {
        str(p.relative_to(PACKAGE_DIR)): hits
        for p in sources
        if p.name != "keys.py" or p.parent != PACKAGE_DIR
        for hits in [_key_literals(p.read_text(), str(p))]
        if hits
    }
    assert offenders == {}


def test_nothing_else_builds_keys_from_the_prefix() -> None:
    for p in sorted(PACKAGE_DIR.rglob("*.py")):
        if p == PACKAGE_DIR / "keys.py":
            continue
        assert "keys.PREFIX" not in p.read_text(), p
