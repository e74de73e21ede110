"""A node's part in zero-copy results: it relays the handles its workers return (serving
them through Arrow Flight to readers on other hosts) without touching the data."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..config import Settings
from ..zero_copy import arrow
from ..zero_copy.flight import FlightService
from ..zero_copy.handle import Handle, Options, is_handle
from ..zero_copy.receive import open_shm

log = logging.getLogger("snakepit_tasks.node")

_SHM_KEYS = ("host", "pid", "fd")


class Relay:
    """Rewrites the handles in a worker's result for this node's transport: a Flight
    location added (``auto``/``flight``), the shared-memory part dropped (``flight``)."""

    def __init__(self, settings: Settings) -> None:
        self.options = Options.from_settings(settings)
        self._held: dict[str, Handle] = {}
        self._lock = threading.Lock()
        self._flight: FlightService | None = None

    def __call__(self, value: Any) -> Any:
        """``value`` (a decoded result) with its handles rewritten in place."""
        stack: list[Any] = [value] if isinstance(value, (dict, list)) else []
        while stack:
            node = stack.pop()
            if is_handle(node):
                self._relay(node)
                continue
            stack.extend(v for v in (node.values() if isinstance(node, dict) else node)
                         if isinstance(v, (dict, list)))
        return value

    def _relay(self, wire: dict[str, Any]) -> None:
        try:
            handle = Handle.from_wire(wire)
        except ValueError:
            return  # not ours to judge: the reader reports it
        if self.options.offers_flight and arrow.available():
            with self._lock:
                self._prune_locked()
                self._held[handle.id] = handle
            try:
                wire["flight"] = self.flight.location
            except Exception as exc:
                log.warning("zero-copy: no Arrow Flight server (%s); readers on other "
                            "hosts cannot fetch results", exc)
        if not self.options.offers_shm:
            for key in _SHM_KEYS:
                wire.pop(key, None)

    @property
    def flight(self) -> FlightService:
        if self._flight is None:
            self._flight = FlightService(self.options.flight_host, self._lookup)
        return self._flight

    def _lookup(self, handle_id: str) -> tuple[Any, Callable[[], Any]] | None:
        with self._lock:
            self._prune_locked()
            handle = self._held.pop(handle_id, None)
        if handle is None:
            return None
        table, mapping = open_shm(handle)
        return table, mapping.release

    def _prune_locked(self) -> None:
        now = time.time()
        for handle_id in [h for h, handle in self._held.items() if handle.expires_at <= now]:
            del self._held[handle_id]

    def stop(self) -> None:
        """Stop serving Flight."""
        if self._flight is not None:
            self._flight.stop()
