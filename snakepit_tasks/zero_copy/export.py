"""Producing: a large value becomes a handle to shared memory, a small one inline bytes.

An :class:`Exporter` belongs to one process (its arena, its options); an :class:`Export`
is one message being encoded: the JSON encoder's ``default`` hook asks it about every value
JSON has no type for (:meth:`Export.default`), and it remembers the handles it made, so a
message that fails half-way gives their memory back (:meth:`Export.abandon`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from ..errors import SerializationError
from . import arrow, ipc
from .arena import Arena
from .handle import INLINE_TAG, Handle, Options
from .host import host_id

log = logging.getLogger("snakepit_tasks.zero_copy")

_warned_no_arrow: list[bool] = []


class Exporter:
    """Makes handles for one process: ``owner`` names it in every handle; ``flight`` gives
    the location of a Flight server serving this process's arena (started on first use).
    ``relayed`` handles always name the shared memory (an adapter runtime's results: its
    node reads them, serves them through Flight and applies its own transport)."""

    def __init__(
        self,
        options: Options,
        arena: Arena,
        owner: str,
        flight: Callable[[], str] | None = None,
        *,
        relayed: bool = False,
    ) -> None:
        self.options = options
        self.relayed = relayed  # a node relays the handles: it decides what they offer
        self.arena = arena
        self.owner = owner
        self.flight = flight

    def begin(self, *, arguments: bool, offer_flight: bool | None = None) -> Export:
        """One message. ``arguments``: small arrays travel inline as Arrow (results keep
        their JSON conversion). ``offer_flight`` overrides whether handles name a Flight
        server (default: the options' transport)."""
        flight = self.options.offers_flight if offer_flight is None else offer_flight
        return Export(self, arguments=arguments, offer_flight=flight and self.flight is not None)


class Export:
    """The values one message exported (see :class:`Exporter`)."""

    def __init__(self, exporter: Exporter, *, arguments: bool, offer_flight: bool) -> None:
        self.exporter = exporter
        self.arguments = arguments
        self.offer_flight = offer_flight
        self.handles: list[str] = []
        self.inline = 0
        self._seen: dict[int, tuple[Any, dict[str, Any]]] = {}  # id -> (value, stand-in)

    @property
    def used(self) -> bool:
        """Whether the message holds a handle (its payload encoding says so)."""
        return bool(self.handles)

    def default(self, value: Any) -> dict[str, Any] | None:
        """The JSON stand-in for ``value`` if it is large data (a handle, or inline Arrow
        bytes), else None (the ordinary conversions apply)."""
        kind = ipc.kind_of(value)
        if kind is None:
            return None
        seen = self._seen.get(id(value))
        if seen is not None and seen[0] is value:  # the encoder may ask twice (orjson, then json)
            return seen[1]
        if not arrow.available():
            if self.arguments:
                arrow.require(f"passing a {type(value).__name__} as an argument")
            if not _warned_no_arrow:
                _warned_no_arrow.append(True)
                log.warning("a result holds a %s; without pyarrow it travels as JSON or a "
                            "marker (%s)", type(value).__name__, arrow.INSTALL_HINT)
            return None
        options = self.exporter.options
        size = ipc.nbytes(value, kind)
        if size < options.threshold_bytes:
            if kind not in ("table", "batch") and not self.arguments:
                return None  # a small array in a result: a list, as before
            stand_in = self._inline(value, kind)
        else:
            stand_in = self._handle(value, kind)
        self._seen[id(value)] = (value, stand_in)
        return stand_in

    def abandon(self) -> None:
        """The message was not sent: free the memory of the handles it made."""
        for handle_id in self.handles:
            self.exporter.arena.discard(handle_id)
        self.handles.clear()

    def _inline(self, value: Any, kind: str) -> dict[str, Any]:
        pa = arrow.require()
        sink = pa.BufferOutputStream()
        ipc.write(ipc.to_arrow(value, kind), sink)
        self.inline += 1
        return {INLINE_TAG: sink.getvalue().to_pybytes()}

    def _handle(self, value: Any, kind: str) -> dict[str, Any]:
        pa = arrow.require()
        exporter, options = self.exporter, self.exporter.options
        data = ipc.to_arrow(value, kind)
        length = ipc.stream_size(data)
        segment = exporter.arena.allocate(length, options.ttl_ms)
        view = segment.data
        try:
            sink = pa.FixedSizeBufferWriter(pa.py_buffer(view))
            ipc.write(data, sink)
            sink.close()
            del sink
        except Exception as exc:
            view.release()
            exporter.arena.discard(segment.handle_id)
            raise SerializationError(
                f"could not write a {type(value).__name__} to shared memory: {exc}") from None
        view.release()
        self.handles.append(segment.handle_id)
        shm = options.offers_shm or exporter.relayed
        handle = Handle(
            id=segment.handle_id, kind=kind, size=length, expires_at=segment.expires_at,
            owner=exporter.owner, host=host_id() if shm else "", pid=os.getpid() if shm else 0,
            fd=segment.fd if shm else -1,
            flight=exporter.flight() if self.offer_flight and exporter.flight else "",
        )
        log.debug("zero-copy export %s: %s, %d bytes, expires in %.0f s", handle.id, kind,
                  length, segment.expires_at - time.time())
        return handle.to_wire()
