"""The one table of every telemetry event snakepit-tasks emits, and the rules for names.

An event is a tuple of strings such as ``("snakepit", "pool", "worker", "spawned")``; it comes
with a dict of measurements (numbers) and a dict of metadata. :data:`EVENTS` says, for each,
where it fires (``caller``: in the process that made the call; ``node``: in the node process;
``any``: in whichever process saw it), what it means, and the keys of both dicts. The README's
event list is generated from it (``python -m snakepit_tasks.telemetry.doc``) and a test keeps
the two equal; another test checks every emission in the code against it.

Events a tool emits with :mod:`snakepit_tasks.bridge.telemetry` are re-emitted by its node as
``("snakepit", "adapter", *name.split("."))``: one family, one row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import TelemetryError

Event = tuple[str, ...]

#: The prefix of every event a tool emits (re-emitted by the node).
ADAPTER_PREFIX: Event = ("snakepit", "adapter")
#: The key of the adapter family's row in :data:`EVENTS`.
ADAPTER_FAMILY: Event = (*ADAPTER_PREFIX, "*")

#: A tool's event name: dot-separated parts, each a letter then letters, digits, ``_``, ``-``.
ADAPTER_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*(?:\.[A-Za-z][A-Za-z0-9_\-]*)*$")
MAX_NAME_LENGTH = 128
MAX_NAME_PARTS = 8


@dataclass(frozen=True)
class EventSpec:
    """What one event means, where it fires, and the keys it carries."""

    side: str
    description: str
    measurements: tuple[str, ...] = ()
    metadata: tuple[str, ...] = ()


_NODE = ("pool", "node")
_WORKER = (*_NODE, "worker_id", "pid")
_CIRCUIT = ("circuit", "pool", "tool", "from")

EVENTS: dict[Event, EventSpec] = {
    # -- pool ---------------------------------------------------------------------------
    ("snakepit", "pool", "init_started"): EventSpec(
        "node", "a node starts its workers", ("workers",), (*_NODE, "adapter", "profile")),
    ("snakepit", "pool", "init_complete"): EventSpec(
        "node", "every worker of a node is ready", ("workers", "duration_ms"),
        (*_NODE, "adapter", "profile")),
    ("snakepit", "pool", "worker_ready"): EventSpec(
        "node", "a worker serves (at start and after each restart)", ("duration_ms",),
        _WORKER),
    ("snakepit", "pool", "saturated"): EventSpec(
        "caller", "a call was refused: pool_max_queue_size calls already wait (QueueFull)",
        ("queued", "max_queue_size"), ("pool", "queue")),
    # -- worker -------------------------------------------------------------------------
    ("snakepit", "worker", "spawned"): EventSpec(
        "node", "a worker process was started", ("system_time",), _WORKER),
    ("snakepit", "worker", "terminated"): EventSpec(
        "node", "a worker process was stopped on purpose (node stopping, recycling)",
        ("uptime_ms",), (*_WORKER, "reason")),
    ("snakepit", "worker", "crash"): EventSpec(
        "node", "a worker process ended unexpectedly", ("exit_code",),
        (*_WORKER, "reason", "signal")),
    ("snakepit", "worker", "tainted"): EventSpec(
        "node", "routing avoids a crashed worker for crash_barrier_taint_duration_ms",
        ("duration_ms",), (*_NODE, "worker_id", "reason")),
    ("snakepit", "worker", "restarted"): EventSpec(
        "node", "a worker serves again as a new process after a crash or a recycle",
        ("duration_ms",), (*_WORKER, "old_pid", "reason")),
    ("snakepit", "worker", "recycled"): EventSpec(
        "node", "a worker is replaced (worker_max_requests, worker_ttl, memory_threshold_mb)",
        ("requests", "uptime_ms", "rss_bytes"), (*_WORKER, "reason")),
    # -- calls --------------------------------------------------------------------------
    ("snakepit", "call", "sent"): EventSpec(
        "caller", "a call was published to its queue", ("system_time",),
        ("call_id", "tool", "pool", "queue", "session_id", "stream")),
    ("snakepit", "call", "dispatched"): EventSpec(
        "node", "a node handed a call to a worker", ("queue_time_ms",),
        ("call_id", "tool", *_NODE, "worker_id", "session_id")),
    ("snakepit", "call", "executed"): EventSpec(
        "node", "a call ended on a worker; error is the error class or None",
        ("duration_us",),
        ("call_id", "tool", *_NODE, "worker_id", "session_id", "success", "error",
         "streaming")),
    ("snakepit", "call", "queue_timeout"): EventSpec(
        "any", "a call waited pool_queue_timeout and will never run (fires where that was "
        "decided: the waiting caller or the node)", ("timeout_ms",),
        ("call_id", "tool", "pool")),
    ("snakepit", "call", "returned"): EventSpec(
        "caller", "a synchronous call returned to its caller (retries included)",
        ("duration_us",), ("tool", "pool", "success", "error")),
    ("snakepit", "call", "dead_lettered"): EventSpec(
        "node", "a node refused a message it could not decode or accept (never run)", (),
        (*_NODE, "queue", "call_id", "reason")),
    # -- heartbeat ----------------------------------------------------------------------
    ("snakepit", "heartbeat", "failure"): EventSpec(
        "node", "a worker did not answer a ping within heartbeat_timeout_ms", ("missed",),
        _WORKER),
    ("snakepit", "heartbeat", "timeout"): EventSpec(
        "node", "a worker missed heartbeat_max_missed pings in a row and is killed",
        ("missed",), _WORKER),
    # -- circuit breaker ----------------------------------------------------------------
    ("snakepit", "circuit_breaker", "opened"): EventSpec(
        "any", "a circuit opened: calls fail fast with CircuitOpen", ("failures",), _CIRCUIT),
    ("snakepit", "circuit_breaker", "half_open"): EventSpec(
        "any", "a circuit lets trial calls through", ("failures",), _CIRCUIT),
    ("snakepit", "circuit_breaker", "closed"): EventSpec(
        "any", "a circuit closed (a trial succeeded, or it was reset)", ("failures",),
        _CIRCUIT),
    # -- retry --------------------------------------------------------------------------
    ("snakepit", "retry", "attempt"): EventSpec(
        "caller", "an attempt failed with a retriable error; the next follows after delay_ms",
        ("attempt", "delay_ms"), ("function", "error")),
    ("snakepit", "retry", "success"): EventSpec(
        "caller", "a retried call succeeded", ("attempts",), ("function",)),
    ("snakepit", "retry", "exhausted"): EventSpec(
        "caller", "every attempt failed; the last error is raised", ("attempts",),
        ("function", "error")),
    # -- sessions -----------------------------------------------------------------------
    ("snakepit", "session", "bound"): EventSpec(
        "node", "a session was bound to a worker (its first call, or after a rebind)", (),
        ("session_id", *_NODE, "worker_id")),
    ("snakepit", "session", "rebound"): EventSpec(
        "caller", "a session's worker was gone or tainted (affinity hint): the binding was "
        "dropped and the worker that takes the call binds it", (),
        ("session_id", "pool", "worker_id", "reason")),
    ("snakepit", "session", "expired"): EventSpec(
        "node", "expired sessions left the index (every session_cleanup_interval)",
        ("count",), ("pool",)),
    ("snakepit", "session", "quota_warning"): EventSpec(
        "node", "sessions reached session_warning_threshold of session_max_sessions",
        ("count", "limit"), ("pool", "threshold")),
    # -- streams ------------------------------------------------------------------------
    ("snakepit", "stream", "chunk"): EventSpec(
        "node", "a chunk of a streaming call reached the node", ("seq", "bytes"),
        ("call_id", "tool", *_NODE, "worker_id")),
    ("snakepit", "stream", "halted"): EventSpec(
        "node", "a stream was stopped by its caller (HALT, close, cancel)", ("chunks",),
        ("call_id", "tool", *_NODE, "worker_id")),
    ("snakepit", "stream", "backpressure"): EventSpec(
        "node", "the node paused a stream until its reader caught up", ("waited_ms",),
        ("call_id",)),
    ("snakepit", "stream", "truncated"): EventSpec(
        "caller", "a reader found chunks trimmed before it got them (StreamTruncated)",
        ("missing",), ("call_id",)),
    # -- janitor ------------------------------------------------------------------------
    ("snakepit", "janitor", "node_dead"): EventSpec(
        "node", "a node of the pool is dead; the janitor takes over its queue", (),
        ("pool", "node", "janitor")),
    ("snakepit", "janitor", "rerouted"): EventSpec(
        "node", "the janitor re-routed a dead node's call to the pool queue", (),
        ("call_id", "tool", "pool", "queue")),
    ("snakepit", "janitor", "failed"): EventSpec(
        "node", "the janitor failed a dead node's call (strict session, or not idempotent)",
        (), ("call_id", "tool", "pool", "error")),
    # -- adapter ------------------------------------------------------------------------
    ADAPTER_FAMILY: EventSpec(
        "node", "a tool's own event (bridge.telemetry.emit/span), re-emitted as "
        "(\"snakepit\", \"adapter\", *name.split(\".\")); spans add start/stop/exception",
        ("system_time", "<the tool's measurements>"),
        ("worker_id", "call_id", "tool", *_NODE, "<the tool's metadata>")),
}


def check_event(event: object) -> Event:
    """``event`` if it is a tuple of non-empty strings naming a known event (any event
    outside the ``snakepit`` namespace is the caller's own); TelemetryError if not."""
    if not isinstance(event, tuple) or not event or not all(
        isinstance(p, str) and p for p in event
    ):
        raise TelemetryError(
            f"an event is a tuple of non-empty strings such as "
            f"('snakepit', 'worker', 'spawned'), got {event!r}"
        )
    if event[0] != "snakepit" or event in EVENTS:
        return event
    if event[:2] == ADAPTER_PREFIX and len(event) > 2:
        check_adapter_name(".".join(event[2:]))
        return event
    raise TelemetryError(
        f"unknown snakepit event {event!r}; snakepit_tasks.telemetry.EVENTS lists them all",
        {"event": list(event)},
    )


def check_adapter_name(name: object) -> str:
    """``name`` if it is a valid name for a tool's event; TelemetryError otherwise."""
    if not isinstance(name, str):
        raise TelemetryError(
            f"a telemetry event name is a string such as 'model.loaded', got "
            f"{type(name).__name__}"
        )
    if (
        len(name) > MAX_NAME_LENGTH
        or name.count(".") >= MAX_NAME_PARTS
        or not ADAPTER_NAME_RE.fullmatch(name)
    ):
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise TelemetryError(
            f"invalid telemetry event name {shown!r}: use at most {MAX_NAME_PARTS} "
            f"dot-separated parts, each a letter followed by letters, digits, '_' or '-', "
            f"{MAX_NAME_LENGTH} characters in all (e.g. 'model.loaded')",
            {"name": shown},
        )
    return name


def adapter_event(name: str) -> Event:
    """The event a node re-emits for a tool's event ``name``."""
    return (*ADAPTER_PREFIX, *name.split("."))
