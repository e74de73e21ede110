"""Telemetry: events (``sp.telemetry.attach``), tracing, Prometheus metrics, logging config.

    import snakepit_tasks as sp

    def on_crash(event, measurements, metadata):
        print(metadata["worker_id"], "crashed:", metadata["reason"])

    sp.telemetry.attach("my-app", ("snakepit", "worker", "crash"), on_crash)

:data:`EVENTS` lists every event, where it fires and what it carries. Caller-side events fire
in the caller's process; node-side events fire in the node process, where handlers are
attached by the ``telemetry_handlers`` setting (``module:function`` hooks run at node start).
Tracing (:mod:`.tracing`), metrics (:mod:`.metrics`) and logging (:mod:`.logs`) are modules of
their own, loaded only when used.
"""

from __future__ import annotations

from .dispatch import Attached, Handler, attach, attach_many, detach, emit, handlers, has_handlers
from .events import EVENTS, Event, EventSpec

__all__ = [
    "EVENTS",
    "Attached",
    "Event",
    "EventSpec",
    "Handler",
    "attach",
    "attach_many",
    "detach",
    "emit",
    "handlers",
    "has_handlers",
]
