"""OpenTelemetry: one trace per call, from the caller's span through Celery's publish and run,
the node, the gRPC hop and the runtime to the tool's span and the tool's own span and event;
on the direct-reply path (sp.execute) and on the Celery lane (execute_async).

This process records its spans with the SDK's in-memory exporter; the node and its runtime
record theirs through the ``otel_setup`` hook (tests/integration/itest_observability.py)
into a file, since an in-memory exporter cannot be read from another process."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import INTEGRATION, wait_until

import snakepit_tasks as sp
from snakepit_tasks.telemetry import tracing

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.instrumentation.celery")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from .itest_observability import span_record  # noqa: E402

ADAPTER = "itest_observability:ObservedAdapter"
_exporter: list[InMemorySpanExporter] = []


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    if not _exporter:  # the global provider can be set once per process
        _exporter.append(InMemorySpanExporter())
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_exporter[0]))
        trace.set_tracer_provider(provider)
    _exporter[0].clear()
    yield _exporter[0]
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    tracing.disable()
    CeleryInstrumentor().uninstrument()


@pytest.fixture
def traced(node: Any, make_app: Any, tmp_path: Path, exporter: InMemorySpanExporter) -> Any:
    spans = tmp_path / "spans.jsonl"
    path = {"PYTHONPATH": str(INTEGRATION)}
    n = node(adapter=ADAPTER, adapter_env=path, env={
        **path, "ITEST_SPANS_FILE": str(spans), "SNAKEPIT_OTEL_ENABLED": "1",
        "SNAKEPIT_OTEL_SETUP": "itest_observability:record_spans",
    })
    n.app = make_app(n, otel_enabled=True)
    n.spans_path = spans
    return n


def remote_spans(n: Any) -> list[dict[str, Any]]:
    if not n.spans_path.exists():
        return []
    return [json.loads(line) for line in n.spans_path.read_text().splitlines() if line]


def trace_of(n: Any, exporter: InMemorySpanExporter, root_name: str,
             expected: int) -> dict[str, dict[str, Any]]:
    """The spans of the one trace whose caller root is ``root_name``, by name."""
    local = [span_record(s) for s in exporter.get_finished_spans()]
    [root] = [s for s in local if s["name"] == root_name]

    def whole() -> list[dict[str, Any]]:
        spans = [s for s in local + remote_spans(n) if s["trace_id"] == root["trace_id"]]
        return spans if len(spans) >= expected else []

    spans = wait_until(whole, timeout=20, message=lambda: f"{expected} spans of the trace; "
                       f"have {[s['name'] for s in local + remote_spans(n)]}")
    by_name = {s["name"]: s for s in spans}
    assert len(by_name) == len(spans), [s["name"] for s in spans]
    return by_name


def assert_chain(spans: dict[str, dict[str, Any]], names: list[str]) -> None:
    for parent, child in zip(names, names[1:], strict=False):
        assert spans[child]["parent_id"] == spans[parent]["span_id"], (parent, child)


CHAIN = ["apply_async/snakepit.execute", "run/snakepit.execute", "snakepit.node measured",
         "snakepit.grpc Execute", "snakepit.runtime Execute", "measured", "work.step"]


FAST_CHAIN = ["snakepit.publish measured", "snakepit.node measured", "snakepit.grpc Execute",
              "snakepit.runtime Execute", "measured", "work.step"]


def test_one_trace_across_the_fast_lane(traced: Any, exporter: InMemorySpanExporter) -> None:
    n = traced
    app = sp.configure(n.app.snakepit_settings, fast_lane=True)
    result = sp.execute("measured", app=app)
    spans = trace_of(n, exporter, "snakepit.execute measured", expected=7)
    assert_chain(spans, ["snakepit.execute measured", *FAST_CHAIN])
    assert spans["snakepit.publish measured"]["kind"] == "PRODUCER"
    assert spans["snakepit.node measured"]["kind"] == "CONSUMER"
    assert spans["snakepit.node measured"]["pid"] == n.pid
    for name in ("snakepit.runtime Execute", "measured", "work.step"):
        assert spans[name]["pid"] == result["pid"]
    assert len({s["trace_id"] for s in spans.values()}) == 1


def test_one_trace_across_the_direct_reply_path(traced: Any,
                                                exporter: InMemorySpanExporter) -> None:
    n = traced
    app = sp.configure(n.app.snakepit_settings, fast_lane=False)
    result = sp.execute("measured", app=app)
    spans = trace_of(n, exporter, "snakepit.execute measured", expected=8)
    assert_chain(spans, ["snakepit.execute measured", *CHAIN])
    root = spans["snakepit.execute measured"]
    assert root["parent_id"] is None and root["pid"] == os.getpid()
    assert spans["apply_async/snakepit.execute"]["kind"] == "PRODUCER"
    assert spans["run/snakepit.execute"]["pid"] == n.pid
    assert spans["snakepit.grpc Execute"]["kind"] == "CLIENT"
    assert spans["snakepit.runtime Execute"]["kind"] == "SERVER"
    for name in ("snakepit.runtime Execute", "measured", "work.step"):
        assert spans[name]["pid"] == result["pid"]  # the adapter runtime
    assert "work.done" in spans["measured"]["events"]  # the tool's event on the tool's span
    assert len({s["trace_id"] for s in spans.values()}) == 1


def test_one_trace_across_the_celery_lane(traced: Any, exporter: InMemorySpanExporter) -> None:
    n = traced
    result = sp.execute_async("measured", app=n.app).get(timeout=30)
    spans = trace_of(n, exporter, "snakepit.send measured", expected=8)
    assert_chain(spans, ["snakepit.send measured", *CHAIN])
    assert spans["measured"]["pid"] == result["pid"]
    assert spans["run/snakepit.execute"]["pid"] == n.pid


def test_api_is_a_no_op_when_off() -> None:
    tracing.disable()
    assert not tracing.enabled()
    with tracing.span("nothing") as span:
        assert span is None
    assert tracing.inject({}) == {} and tracing.extract({"traceparent": "x"}) is None
    assert tracing.grpc_metadata() is None
    tracing.add_event("nothing")
