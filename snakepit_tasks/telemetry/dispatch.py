"""Handlers and emission: attach functions to events; :func:`emit` calls them in this process.

A handler is ``fn(event, measurements, metadata)``. It runs synchronously in the emitting
thread, so it should be quick (hand heavy work to a queue). A handler that raises is detached
(all its events) with one logged error, and the emission goes on: a handler never breaks a
call. With nothing attached to an event, :func:`emit` is one dictionary lookup
(``python -m bench.telemetry`` measures it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import TelemetryError
from .events import Event, check_event

log = logging.getLogger("snakepit_tasks.telemetry")

Handler = Callable[[Event, Mapping[str, Any], Mapping[str, Any]], Any]

_EMPTY: Mapping[str, Any] = {}


@dataclass(frozen=True)
class Attached:
    """One handler as attached: its id, the events it listens to, its function."""

    handler_id: str
    events: tuple[Event, ...]
    fn: Handler


# Copy-on-write: attach/detach replace these under the lock; emit reads them without it.
_by_event: dict[Event, tuple[Attached, ...]] = {}
_by_id: dict[str, Attached] = {}
_lock = threading.Lock()


def attach(handler_id: str, event: Event, fn: Handler) -> None:
    """Call ``fn(event, measurements, metadata)`` whenever ``event`` is emitted in this
    process. TelemetryError if ``handler_id`` is attached already or the event is unknown."""
    attach_many(handler_id, [event], fn)


def attach_many(handler_id: str, events: Iterable[Event], fn: Handler) -> None:
    """:func:`attach` for several events under one id (:func:`detach` removes them all)."""
    global _by_event, _by_id
    if not isinstance(handler_id, str) or not handler_id:
        raise TelemetryError(f"a handler id is a non-empty string, got {handler_id!r}")
    if not callable(fn):
        raise TelemetryError(f"handler {handler_id!r}: {fn!r} is not callable")
    checked = tuple(dict.fromkeys(check_event(e) for e in events))
    if not checked:
        raise TelemetryError(f"handler {handler_id!r}: no events to attach to")
    entry = Attached(handler_id, checked, fn)
    with _lock:
        if handler_id in _by_id:
            raise TelemetryError(
                f"a telemetry handler with id {handler_id!r} is already attached; detach it "
                "first or choose another id", {"handler_id": handler_id},
            )
        by_event = dict(_by_event)
        for event in checked:
            by_event[event] = (*by_event.get(event, ()), entry)
        _by_id = {**_by_id, handler_id: entry}
        _by_event = by_event


def detach(handler_id: str) -> bool:
    """Remove the handler attached as ``handler_id``; False if there was none."""
    global _by_event, _by_id
    with _lock:
        entry = _by_id.get(handler_id)
        if entry is None:
            return False
        by_event = dict(_by_event)
        for event in entry.events:
            left = tuple(h for h in by_event.get(event, ()) if h.handler_id != handler_id)
            if left:
                by_event[event] = left
            else:
                by_event.pop(event, None)
        _by_id = {k: v for k, v in _by_id.items() if k != handler_id}
        _by_event = by_event
    return True


def handlers(event: Event | None = None) -> list[Attached]:
    """The handlers attached (to ``event``, or to any event)."""
    if event is not None:
        return list(_by_event.get(event, ()))
    return list(_by_id.values())


def has_handlers(event: Event) -> bool:
    """Whether anything listens to ``event`` (to skip building costly measurements)."""
    return event in _by_event


def emit(
    event: Event,
    measurements: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Call every handler attached to ``event``, in the order they were attached."""
    attached = _by_event.get(event)
    if attached is None:
        return
    m = _EMPTY if measurements is None else measurements
    md = _EMPTY if metadata is None else metadata
    for entry in attached:
        try:
            entry.fn(event, m, md)
        except Exception as exc:
            if detach(entry.handler_id):
                log.error(
                    "telemetry handler %r raised on %s and was detached: %r",
                    entry.handler_id, event, exc, exc_info=True,
                )
