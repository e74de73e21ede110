"""This process's side of zero-copy: one arena for the values it produces, and a Flight
server for them, both made on first use."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from . import arrow, ipc
from .arena import Arena
from .export import Exporter
from .flight import FlightService
from .handle import Options, is_handle

_lock = threading.Lock()
_arena: Arena | None = None
_flight: FlightService | None = None


def arena(idle_ms: int | None = None) -> Arena:
    """This process's arena (``idle_ms``: how long it keeps a free segment)."""
    global _arena
    with _lock:
        if _arena is None:
            _arena = Arena() if idle_ms is None else Arena(idle_ms)
        elif idle_ms is not None:
            _arena.idle_ms = idle_ms
        return _arena


def flight_service(host: str) -> FlightService:
    """The Flight server of this process's arena (listening once asked for its location)."""
    global _flight
    with _lock:
        if _flight is None:
            _flight = FlightService(host, _lookup)
        return _flight


def exporter(options: Options, owner: str, *, relayed: bool = False) -> Exporter:
    """An exporter into this process's arena, offering its Flight server when asked to."""
    flight: Callable[[], str] | None = None
    if not relayed:
        def flight() -> str:
            return flight_service(options.flight_host).location
    return Exporter(options, arena(options.arena_idle_ms), owner, flight, relayed=relayed)


def discard_own(value: Any) -> int:
    """Free the memory of every handle in ``value`` (dicts and lists) that this process
    made (a message that was not sent after all); how many."""
    if _arena is None:
        return 0
    pid, freed = os.getpid(), 0
    stack: list[Any] = [value] if isinstance(value, (dict, list)) else []
    while stack:
        node = stack.pop()
        if is_handle(node):
            if node.get("pid") == pid and isinstance(node.get("id"), str):
                _arena.discard(node["id"])
                freed += 1
            continue
        stack.extend(v for v in (node.values() if isinstance(node, dict) else node)
                     if isinstance(v, (dict, list)))
    return freed


def _lookup(handle_id: str) -> tuple[Any, Callable[[], Any]] | None:
    segment = arena().get(handle_id)
    if segment is None:
        return None
    pa = arrow.require()
    table = pa.ipc.open_stream(pa.BufferReader(pa.py_buffer(segment.data))).read_all()
    return table, lambda: arena().release(handle_id)


class LazyExport:
    """An export hook that makes its :class:`~.export.Export` (with ``make``) only when a
    message holds large data, so ordinary messages cost one type check per unusual value."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self.export: Any = None

    @property
    def started(self) -> bool:
        """Whether the message held a value of a zero-copy kind."""
        return self.export is not None

    @property
    def used(self) -> bool:
        """Whether the message holds a handle."""
        return self.export is not None and self.export.used

    def default(self, value: Any) -> Any:
        if self.export is None:
            if ipc.kind_of(value) is None:
                return None
            self.export = self._make()
        return self.export.default(value)

    def abandon(self) -> None:
        """The message was not sent: free the memory of its handles."""
        if self.export is not None:
            self.export.abandon()
