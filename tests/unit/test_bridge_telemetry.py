"""Adapter-side telemetry: validation, the bounded buffer, spans, the runtime's messages
carrying the events, and the node re-emitting them under ("snakepit", "adapter", ...)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from snakepit_tasks import telemetry as node_telemetry
from snakepit_tasks._proto import bridge_pb2 as pb
from snakepit_tasks.bridge import BaseAdapter, telemetry, tool
from snakepit_tasks.bridge.runtime import AdapterServicer
from snakepit_tasks.errors import TelemetryError
from snakepit_tasks.node.adapter_events import reemit


@pytest.fixture(autouse=True)
def empty_buffer() -> Iterator[None]:
    telemetry.drain()
    yield
    telemetry.drain()
    for attached in node_telemetry.handlers():
        node_telemetry.detach(attached.handler_id)


def names(events: list[pb.TelemetryEvent]) -> list[str]:
    return [e.name for e in events]


def test_emit_buffers_a_validated_event() -> None:
    telemetry.emit("model.loaded", {"ms": 12, "n": 3.5}, {"model": "m1", "ok": True, "x": None})
    events, dropped = telemetry.drain()
    assert dropped == 0 and names(events) == ["model.loaded"]
    [e] = events
    assert dict(e.measurements) == {"ms": 12.0, "n": 3.5}
    assert json.loads(e.metadata) == {"model": "m1", "ok": True, "x": None}
    assert e.time_ns > 0 and e.call_id == "" and e.tool == ""
    assert telemetry.drain() == ([], 0)


@pytest.mark.parametrize("args", [
    ("bad name", None, None),
    ("ok", {"x": "not a number"}, None),
    ("ok", {"x": True}, None),
    ("ok", {"x": float("nan")}, None),
    ("ok", None, {"x": [1, 2]}),
    ("ok", None, {"": 1}),
    ("ok", [1], None),
    ("ok", {f"k{i}": i for i in range(40)}, None),
])
def test_bad_events_are_clear_errors(args: tuple[Any, Any, Any]) -> None:
    with pytest.raises(TelemetryError, match="event|telemetry"):
        telemetry.emit(*args)
    assert telemetry.drain() == ([], 0)


def test_long_metadata_strings_are_cut() -> None:
    telemetry.emit("x", {}, {"text": "a" * 5000})
    [e], _ = telemetry.drain()
    assert len(json.loads(e.metadata)["text"]) == telemetry.MAX_TEXT


def test_the_buffer_is_bounded_and_counts_what_it_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "MAX_BUFFERED", 3)
    for _ in range(5):
        telemetry.emit("x")
    events, dropped = telemetry.drain()
    assert len(events) == 3 and dropped == 2


def test_events_in_a_call_carry_its_id_and_tool() -> None:
    with telemetry.in_call("call-1", "predict"):
        telemetry.emit("inside")
    telemetry.emit("outside")
    inside, outside = telemetry.drain()[0]
    assert (inside.call_id, inside.tool) == ("call-1", "predict")
    assert (outside.call_id, outside.tool) == ("", "")


def test_span_emits_start_and_stop_or_exception() -> None:
    with telemetry.span("step", {"stage": "a"}):
        pass
    with pytest.raises(ValueError), telemetry.span("step", {"stage": "b"}):
        raise ValueError("nope")
    events, _ = telemetry.drain()
    assert names(events) == ["step.start", "step.stop", "step.start", "step.exception"]
    assert "duration_us" in events[1].measurements
    failed = json.loads(events[3].metadata)
    assert failed == {"stage": "b", "kind": "ValueError", "reason": "nope"}
    with pytest.raises(TelemetryError), telemetry.span("bad name"):
        pass


class Emitting(BaseAdapter):
    @tool(description="emit")
    def work(self) -> int:
        telemetry.emit("work.done", {"n": 1})
        return 1

    @tool(description="bad name")
    def bad(self) -> None:
        telemetry.emit("no spaces allowed")

    @tool(description="stream", supports_streaming=True)
    def items(self) -> Iterator[int]:
        for i in range(2):
            telemetry.emit("item", {"i": i})
            yield i


class Context:
    def add_callback(self, fn: Any) -> bool:
        return True

    def invocation_metadata(self) -> tuple[()]:
        return ()


def test_the_runtime_sends_events_with_the_response_chunks_and_heartbeats() -> None:
    servicer = AdapterServicer(Emitting, "n/0", 1)
    response = servicer.Execute(pb.ExecuteRequest(call_id="c1", tool="work"), Context())
    assert response.ok and names(response.events) == ["work.done"]
    assert response.events[0].call_id == "c1" and response.events[0].tool == "work"
    chunks = list(servicer.ExecuteStream(pb.ExecuteRequest(call_id="c2", tool="items"),
                                         Context()))
    assert [names(c.events) for c in chunks] == [["item"], ["item"], []]
    telemetry.emit("idle")  # outside any call: the next heartbeat takes it
    beat = servicer.Heartbeat(pb.HeartbeatRequest(seq=1), None)
    assert names(beat.events) == ["idle"]


def test_a_bad_name_fails_the_tool_clearly() -> None:
    servicer = AdapterServicer(Emitting, "n/0", 1)
    response = servicer.Execute(pb.ExecuteRequest(call_id="c1", tool="bad"), Context())
    assert not response.ok
    assert response.error.type == "TelemetryError"
    assert "invalid telemetry event name 'no spaces allowed'" in response.error.message


def test_the_node_re_emits_adapter_events_with_where_they_came_from() -> None:
    seen: list[Any] = []
    node_telemetry.attach("t", ("snakepit", "adapter", "work", "done"),
                          lambda e, m, md: seen.append((e, dict(m), dict(md))))
    with telemetry.in_call("c9", "work"):
        telemetry.emit("work.done", {"n": 2}, {"model": "m", "pool": "spoofed"})
        telemetry.emit("other.event")  # nobody listens: skipped
    events, _ = telemetry.drain()
    message = pb.ExecuteResponse(ok=True, events=events)
    worker = SimpleNamespace(worker_id="node@h/0", pool="p", node="node@h")
    reemit(worker, message)  # type: ignore[arg-type]
    [(event, measurements, metadata)] = seen
    assert event == ("snakepit", "adapter", "work", "done")
    assert measurements["n"] == 2 and measurements["system_time"] == events[0].time_ns
    assert metadata == {"model": "m", "pool": "p", "worker_id": "node@h/0", "call_id": "c9",
                        "tool": "work", "node": "node@h"}


def test_the_node_skips_invalid_names_it_receives(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="snakepit_tasks.telemetry")
    seen: list[Any] = []
    node_telemetry.attach("t", ("snakepit", "adapter", "ok"), lambda *a: seen.append(a))
    message = pb.ExecuteResponse(events=[pb.TelemetryEvent(name="bad name"),
                                         pb.TelemetryEvent(name="ok", metadata=b"[1]")],
                                 events_dropped=4)
    reemit(SimpleNamespace(worker_id="n/0", pool="p", node="n"), message)  # type: ignore[arg-type]
    assert len(seen) == 1
    assert "invalid name" in caplog.text and "dropped 4" in caplog.text
