"""Telemetry from inside tools: ``emit`` events and time ``span``\\ s; they reach the node.

    from snakepit_tasks.bridge import telemetry

    telemetry.emit("model.inference", {"latency_ms": 45, "tokens": 128}, {"model": "m1"})
    with telemetry.span("preprocess", {"stage": "tokenize"}):
        ...

Names are validated (dot-separated parts of letters, digits, ``_`` and ``-``, each starting
with a letter; at most 8 parts and 128 characters) and a bad name, a measurement that is not a
number or a metadata value that is not a string, number, boolean or None raises
:class:`~snakepit_tasks.errors.TelemetryError` at once. Measurements become floats; metadata
strings are cut at 1,024 characters. An event is appended to a bounded buffer of this process
(the tool never waits) and rides the next message the runtime sends its node anyway: the
call's response, a stream chunk, or a heartbeat answer. The node re-emits it as
``("snakepit", "adapter", *name.split("."))`` with ``worker_id``, ``call_id``, ``tool``,
``pool`` and ``node`` added to the metadata and ``system_time`` (ns) to the measurements.
A span emits ``<name>.start``, then ``<name>.stop`` or ``<name>.exception`` (with
``duration_us``), and is a child span of the tool's span when tracing is on; an event is also
recorded on the current span.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from .._proto import bridge_pb2 as pb
from ..errors import TelemetryError
from ..telemetry import tracing
from ..telemetry.events import check_adapter_name

MAX_BUFFERED = 10_000
MAX_KEYS = 32
MAX_KEY_LENGTH = 64
MAX_TEXT = 1024

_buffer: list[pb.TelemetryEvent] = []
_dropped = 0
_lock = threading.Lock()
# (call id, tool) of the call the current thread or task runs; set by the runtime.
_call: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "snakepit_call", default=("", "")
)


def emit(
    name: str,
    measurements: Mapping[str, float] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Send event ``name`` with numeric ``measurements`` and scalar ``metadata`` to the node."""
    check_adapter_name(name)
    values = _measurements(name, measurements)
    info = _metadata(name, metadata)
    call_id, tool = _call.get()
    event = pb.TelemetryEvent(
        name=name, measurements=values, metadata=json.dumps(info).encode(),
        time_ns=time.time_ns(), call_id=call_id, tool=tool,
    )
    _append(event)
    tracing.add_event(name, {**values, **info})


@contextlib.contextmanager
def span(name: str, metadata: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Time the ``with`` block: ``<name>.start``, then ``<name>.stop`` or, if it raises,
    ``<name>.exception`` (the exception propagates)."""
    for suffix in ("start", "exception"):
        check_adapter_name(f"{name}.{suffix}")
    info = _metadata(name, metadata)
    emit(f"{name}.start", {}, info)
    started = time.perf_counter_ns()
    with tracing.span(name, info):
        try:
            yield
        except BaseException as exc:
            elapsed = (time.perf_counter_ns() - started) // 1000
            failed = {**info, "kind": type(exc).__name__, "reason": str(exc)[:MAX_TEXT]}
            emit(f"{name}.exception", {"duration_us": elapsed}, failed)
            raise
    emit(f"{name}.stop", {"duration_us": (time.perf_counter_ns() - started) // 1000}, info)


# -- for the runtime ---------------------------------------------------------------------
@contextlib.contextmanager
def in_call(call_id: str, tool: str) -> Iterator[None]:
    """Attribute events emitted in the ``with`` block (this thread) to call ``call_id``."""
    token = _call.set((call_id, tool))
    try:
        yield
    finally:
        _call.reset(token)


def drain() -> tuple[list[pb.TelemetryEvent], int]:
    """Take every buffered event, and how many were dropped since the last drain."""
    global _buffer, _dropped
    if not _buffer and not _dropped:
        return [], 0
    with _lock:
        events, dropped = _buffer, _dropped
        _buffer, _dropped = [], 0
    return events, dropped


def _append(event: pb.TelemetryEvent) -> None:
    global _dropped
    with _lock:
        if len(_buffer) >= MAX_BUFFERED:
            _dropped += 1
        else:
            _buffer.append(event)


def _check_key(name: str, what: str, key: object) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise TelemetryError(
            f"event {name!r}: {what} keys are non-empty strings of at most {MAX_KEY_LENGTH} "
            f"characters, got {key!r}"
        )
    return key


def _measurements(name: str, values: Mapping[str, Any] | None) -> dict[str, float]:
    if values is None:
        return {}
    if not isinstance(values, Mapping) or len(values) > MAX_KEYS:
        raise TelemetryError(
            f"event {name!r}: measurements are a dict of at most {MAX_KEYS} numbers"
        )
    found: dict[str, float] = {}
    for key, value in values.items():
        _check_key(name, "measurement", key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and math.isnan(value)
        ):
            raise TelemetryError(
                f"event {name!r}: measurement {key!r} must be a number, got {value!r}"
            )
        found[key] = float(value)
    return found


def _metadata(name: str, values: Mapping[str, Any] | None) -> dict[str, Any]:
    if values is None:
        return {}
    if not isinstance(values, Mapping) or len(values) > MAX_KEYS:
        raise TelemetryError(
            f"event {name!r}: metadata is a dict of at most {MAX_KEYS} entries"
        )
    found: dict[str, Any] = {}
    for key, value in values.items():
        _check_key(name, "metadata", key)
        if isinstance(value, str):
            value = value[:MAX_TEXT]
        elif isinstance(value, float) and not math.isfinite(value):
            value = None
        elif value is not None and not isinstance(value, (bool, int, float)):
            raise TelemetryError(
                f"event {name!r}: metadata {key!r} must be a string, number, boolean or "
                f"None, got {type(value).__name__}"
            )
        found[key] = value
    return found
