"""sp.telemetry: attaching, emitting, a raising handler, the EVENTS table and the code that
emits them (every emission matches the table, every row is emitted somewhere)."""

from __future__ import annotations

import ast
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import snakepit_tasks as sp
from snakepit_tasks import telemetry
from snakepit_tasks.errors import TelemetryError
from snakepit_tasks.telemetry.events import ADAPTER_FAMILY, adapter_event, check_adapter_name

PACKAGE = Path(__file__).resolve().parents[2] / "snakepit_tasks"
SPAWNED = ("snakepit", "worker", "spawned")
CRASH = ("snakepit", "worker", "crash")


@pytest.fixture(autouse=True)
def no_handlers() -> Iterator[None]:
    yield
    for attached in telemetry.handlers():
        telemetry.detach(attached.handler_id)


def test_sp_telemetry_is_the_package() -> None:
    assert sp.telemetry is telemetry
    assert sp.telemetry.attach is telemetry.attach


def test_attach_emit_detach() -> None:
    seen: list[tuple[Any, ...]] = []
    telemetry.attach("h1", SPAWNED, lambda e, m, md: seen.append((e, dict(m), dict(md))))
    telemetry.emit(SPAWNED, {"system_time": 1}, {"worker_id": "n/0"})
    telemetry.emit(CRASH, {"exit_code": 1}, {})  # not attached
    assert seen == [(SPAWNED, {"system_time": 1}, {"worker_id": "n/0"})]
    assert telemetry.detach("h1") is True
    assert telemetry.detach("h1") is False
    telemetry.emit(SPAWNED, {}, {})
    assert len(seen) == 1


def test_attach_many_and_order() -> None:
    seen: list[str] = []
    telemetry.attach_many("a", [SPAWNED, CRASH], lambda e, m, md: seen.append("a:" + e[-1]))
    telemetry.attach("b", SPAWNED, lambda e, m, md: seen.append("b:" + e[-1]))
    telemetry.emit(SPAWNED)
    telemetry.emit(CRASH)
    assert seen == ["a:spawned", "b:spawned", "a:crash"]
    assert [h.handler_id for h in telemetry.handlers(SPAWNED)] == ["a", "b"]
    telemetry.detach("a")
    assert [h.handler_id for h in telemetry.handlers()] == ["b"]
    assert not telemetry.has_handlers(CRASH)


def test_missing_dicts_are_empty_mappings() -> None:
    seen: list[Any] = []
    telemetry.attach("h", SPAWNED, lambda e, m, md: seen.append((dict(m), dict(md))))
    telemetry.emit(SPAWNED)
    assert seen == [({}, {})]


def test_a_handler_id_is_attached_once() -> None:
    telemetry.attach("same", SPAWNED, print)
    with pytest.raises(TelemetryError, match="already attached"):
        telemetry.attach("same", CRASH, print)


@pytest.mark.parametrize("event", [
    ("snakepit", "worker", "spawnd"),  # a typo in our namespace
    ("snakepit",),
    ("snakepit", "worker", ""),
    "snakepit.worker.spawned",
    (),
    ("snakepit", "adapter", "bad name"),
])
def test_unknown_or_malformed_events_are_refused(event: Any) -> None:
    with pytest.raises(TelemetryError):
        telemetry.attach("h", event, print)


def test_own_events_and_adapter_events_may_be_attached() -> None:
    telemetry.attach("mine", ("my_app", "anything"), print)
    telemetry.attach("tool", ("snakepit", "adapter", "model", "loaded"), print)


def test_a_raising_handler_is_detached_with_one_logged_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    def bad(*_: Any) -> None:
        calls.append("bad")
        raise RuntimeError("boom")

    telemetry.attach("bad", SPAWNED, bad)
    telemetry.attach("good", SPAWNED, lambda *_: calls.append("good"))
    with caplog.at_level(logging.ERROR, logger="snakepit_tasks.telemetry"):
        telemetry.emit(SPAWNED)  # does not raise
        telemetry.emit(SPAWNED)
    assert calls == ["bad", "good", "good"]
    errors = [r for r in caplog.records if r.name == "snakepit_tasks.telemetry"]
    assert len(errors) == 1
    assert "'bad'" in errors[0].getMessage() and "detached" in errors[0].getMessage()
    assert [h.handler_id for h in telemetry.handlers()] == ["good"]


def test_adapter_names() -> None:
    assert check_adapter_name("model.loaded") == "model.loaded"
    assert adapter_event("model.loaded") == ("snakepit", "adapter", "model", "loaded")
    for bad in ("", "1model", "model..x", "model.", "has space", "x" * 129, "a." * 8 + "a",
                "snakepit\n", "ü"):
        with pytest.raises(TelemetryError, match="invalid telemetry event name"):
            check_adapter_name(bad)
    with pytest.raises(TelemetryError):
        check_adapter_name(42)


def test_every_row_of_events_is_well_formed() -> None:
    for event, spec in telemetry.EVENTS.items():
        assert event[0] == "snakepit" and len(event) >= 3, event
        assert spec.side in ("caller", "node", "any"), event
        assert spec.description and not spec.description.endswith("."), event
        assert len(set(spec.metadata)) == len(spec.metadata), event


# -- the code against the table ------------------------------------------------------------
def _emissions() -> list[tuple[str, int, ast.Call]]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        if "_proto" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "emit" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "telemetry"):
                found.append((str(path.relative_to(PACKAGE.parent)), node.lineno, node))
    return found


def _literal_event(node: ast.AST) -> tuple[str, ...] | None:
    if isinstance(node, ast.Tuple) and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts
    ):
        return tuple(e.value for e in node.elts)  # type: ignore[attr-defined]
    return None


def _keys(node: ast.AST | None) -> tuple[set[str], bool] | None:
    """The literal keys of a dict expression, and whether it also spreads something."""
    if node is None:
        return set(), False
    if not isinstance(node, ast.Dict):
        return None
    keys, spread = set(), False
    for key in node.keys:
        if key is None:
            spread = True
        elif isinstance(key, ast.Constant) and isinstance(key.value, str):
            keys.add(key.value)
    return keys, spread


def _dict_literals() -> dict[str, tuple[str, ...]]:
    """Module-level ``_TRANSITIONS = {...: ("snakepit", ...)}`` style tables of events."""
    found: dict[str, tuple[str, ...]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                for value in node.values:
                    event = _literal_event(value)
                    if event and event[0] == "snakepit":
                        found[f"{path.name}:{node.lineno}:{event}"] = event
    return found


def test_every_emission_names_an_event_of_the_table_with_its_keys() -> None:
    problems = []
    for where, line, call in _emissions():
        if where.startswith("snakepit_tasks/telemetry/") or where.endswith(
            "bridge/telemetry.py"
        ):
            continue
        event = _literal_event(call.args[0]) if call.args else None
        if event is None:
            continue  # computed: checked by the table-of-events test below
        spec = telemetry.EVENTS.get(event)
        if spec is None:
            problems.append(f"{where}:{line}: {event} is not in EVENTS")
            continue
        for position, declared in ((1, spec.measurements), (2, spec.metadata)):
            arg = call.args[position] if len(call.args) > position else None
            keys = _keys(arg)
            if keys is None:
                continue
            literal, spread = keys
            if not literal <= set(declared) or (not spread and literal != set(declared)):
                problems.append(f"{where}:{line}: {event} arg {position} has keys "
                                f"{sorted(literal)}, EVENTS says {sorted(declared)}")
    assert not problems, "\n".join(problems)


def test_every_event_of_the_table_is_emitted_somewhere() -> None:
    emitted = {_literal_event(c.args[0]) for _, _, c in _emissions() if c.args}
    emitted |= set(_dict_literals().values())
    missing = [e for e in telemetry.EVENTS if e != ADAPTER_FAMILY and e not in emitted]
    assert not missing, f"rows of EVENTS nothing emits: {missing}"
