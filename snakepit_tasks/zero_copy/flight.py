"""Arrow Flight for readers on other hosts: a server that streams a held value by its
handle id (once: the value is released after the stream), and the client side, :func:`fetch`.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import SerializationError
from . import arrow, heap
from .handle import Handle

log = logging.getLogger("snakepit_tasks.zero_copy")

#: Rows per Flight message are chosen so one message carries about this many bytes. A few
#: MiB: the reader receives each message into a block of its heap, kept warm for the next
#: fetch (see :mod:`.heap`); a block of 32 MiB or more would be a fresh mapping each time.
MESSAGE_BYTES = 4 * 1024 * 1024
CONNECT_TIMEOUT_S = 10.0

#: ``lookup(handle_id)`` -> ``(pyarrow Table, done)`` or None; ``done()`` runs after the stream.
Lookup = Callable[[str], "tuple[Any, Callable[[], Any]] | None"]


class FlightService:
    """A Flight server in this process (started on first :attr:`location`, on a free port
    of ``host``), serving the values ``lookup`` finds."""

    def __init__(self, host: str, lookup: Lookup) -> None:
        self.host = host
        self.lookup = lookup
        self._server: Any = None
        self._location = ""
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        """``grpc://host:port`` of the running server (started now if need be)."""
        with self._lock:
            if self._server is None:
                self._server = _make_server(self.host, self.lookup)
                advertised = self.host if self.host not in ("0.0.0.0", "::", "") else (
                    socket.getfqdn())
                self._location = f"grpc://{advertised}:{self._server.port}"
                log.info("zero-copy: Arrow Flight serving at %s", self._location)
            return self._location

    @property
    def running(self) -> bool:
        return self._server is not None

    def stop(self) -> None:
        """Shut the server down (streams in progress end)."""
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            try:
                server.shutdown()
            except Exception:
                log.debug("flight server shutdown failed", exc_info=True)


def _make_server(host: str, lookup: Lookup) -> Any:
    flight = arrow.flight()

    class ZeroCopyServer(flight.FlightServerBase):  # type: ignore[name-defined]
        def do_get(self, context: Any, ticket: Any) -> Any:
            handle_id = ticket.ticket.decode(errors="replace")
            found = lookup(handle_id)
            if found is None:
                raise flight.FlightUnavailableError(
                    f"zero-copy value {handle_id} is gone (released, expired or unknown)")
            table, done = found
            return flight.GeneratorStream(table.schema, _batches(table, done))

    return ZeroCopyServer(f"grpc://{host}:0")


def _batches(table: Any, done: Callable[[], Any]) -> Iterator[Any]:
    try:
        row_bytes = max(1, table.nbytes // max(1, table.num_rows))
        rows = max(1, MESSAGE_BYTES // row_bytes)
        yield from table.to_batches(max_chunksize=rows)
    finally:
        del table
        done()


def fetch(handle: Handle) -> Any:
    """The Arrow table of ``handle``, streamed from its Flight server (a copy in this
    process). SerializationError when the server cannot be reached or has let it go."""
    flight = arrow.flight()
    heap.retain_for(handle.size)
    try:
        client = flight.connect(handle.flight)
        try:
            options = flight.FlightCallOptions(timeout=max(CONNECT_TIMEOUT_S, handle.size / 2e8))
            return client.do_get(flight.Ticket(handle.id.encode()), options).read_all()
        finally:
            client.close()
    except flight.FlightError as exc:
        raise SerializationError(
            f"zero-copy value {handle.id} could not be fetched from {handle.flight}: {exc}",
            {"handle": handle.id, "flight": handle.flight},
        ) from None
    except OSError as exc:
        raise SerializationError(
            f"zero-copy value {handle.id}: Arrow Flight at {handle.flight} unreachable: {exc}",
            {"handle": handle.id, "flight": handle.flight},
        ) from None
