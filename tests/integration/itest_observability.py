"""An adapter and node hooks for the observability tests (imported by nodes and runtimes
through PYTHONPATH): the adapter uses bridge.telemetry, prints and logs; the hooks record
every telemetry event and every span of a node or runtime as JSON lines in a file."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from snakepit_tasks.bridge import BaseAdapter, telemetry, tool

EVENTS_FILE = "ITEST_EVENTS_FILE"
SPANS_FILE = "ITEST_SPANS_FILE"
ADAPTER_EVENTS = [
    ("snakepit", "adapter", "work", "done"),
    ("snakepit", "adapter", "work", "step", "start"),
    ("snakepit", "adapter", "work", "step", "stop"),
    ("snakepit", "adapter", "work", "step", "exception"),
    ("snakepit", "adapter", "stream", "item"),
]

log = logging.getLogger("itest.observability")


class ObservedAdapter(BaseAdapter):
    """Tools that emit telemetry, print and log."""

    @tool(description="Emit an event and time a span")
    def measured(self, n: int = 3) -> dict[str, Any]:
        telemetry.emit("work.done", {"items": n, "latency_ms": 1.5}, {"kind": "unit"})
        with telemetry.span("work.step", {"stage": "one"}):
            time.sleep(0.001)
        return {"pid": os.getpid(), "worker_id": self.session_context.worker_id}

    @tool(description="A span whose block raises")
    def failing_span(self) -> None:
        with telemetry.span("work.step", {"stage": "two"}):
            raise ValueError("bad step")

    @tool(description="Emit an event with an invalid name")
    def bad_name(self, name: str = "bad name!") -> None:
        telemetry.emit(name, {"x": 1})

    @tool(description="Print and log, with secrets")
    def noisy(self, url: str) -> dict[str, Any]:
        print(f"printing {url}", flush=True)
        log.warning("connecting to %s", url)
        return {"pid": os.getpid()}

    @tool(description="Raise with a secret in the message")
    def leak(self, url: str) -> None:
        raise ConnectionError(f"cannot reach {url}")

    @tool(description="Emit an event from a background thread (outside any call)")
    def background(self) -> dict[str, Any]:
        thread = threading.Thread(
            target=lambda: (time.sleep(0.2), telemetry.emit("work.done", {"items": 0},
                                                             {"kind": "background"})))
        thread.start()
        return {"pid": os.getpid()}

    @tool(description="Stream n items, one event each", supports_streaming=True)
    def items(self, n: int = 3) -> Iterator[dict[str, Any]]:
        for i in range(n):
            telemetry.emit("stream.item", {"i": i})
            yield {"i": i}


# -- hooks (settings telemetry_handlers and otel_setup) ----------------------------------
_lock = threading.Lock()


def _append(path: str, record: dict[str, Any]) -> None:
    line = json.dumps(record, default=str)
    with _lock, open(path, "a") as f:
        f.write(line + "\n")


def record_events() -> None:
    """telemetry_handlers hook: every event this node emits, to $ITEST_EVENTS_FILE."""
    from snakepit_tasks import telemetry as events
    from snakepit_tasks.telemetry.events import ADAPTER_FAMILY

    path = os.environ[EVENTS_FILE]

    def handler(event: tuple[str, ...], measurements: Any, metadata: Any) -> None:
        _append(path, {"event": list(event), "measurements": dict(measurements),
                       "metadata": dict(metadata), "pid": os.getpid()})

    names = [e for e in events.EVENTS if e != ADAPTER_FAMILY] + ADAPTER_EVENTS
    events.attach_many("itest-recorder", names, handler)
    events.attach("itest-raiser", ("snakepit", "call", "dispatched"), _raise)


def _raise(*_: Any) -> None:
    raise RuntimeError("this handler always fails")


def record_spans() -> None:
    """otel_setup hook: an SDK tracer provider whose spans go to $ITEST_SPANS_FILE."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    path = os.environ[SPANS_FILE]

    class FileExporter(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            for s in spans:
                _append(path, span_record(s))
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)


def span_record(s: Any) -> dict[str, Any]:
    """A finished span as plain data."""
    return {
        "name": s.name,
        "trace_id": format(s.context.trace_id, "032x"),
        "span_id": format(s.context.span_id, "016x"),
        "parent_id": format(s.parent.span_id, "016x") if s.parent else None,
        "kind": s.kind.name,
        "events": [e.name for e in s.events],
        "attributes": dict(s.attributes or {}),
        "pid": os.getpid(),
    }
