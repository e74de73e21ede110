"""Consuming: a handle becomes the value again, mapped from shared memory on the same host
or fetched through Arrow Flight from another, and is released when its reader is done.

A value mapped from shared memory is released (its producer may reuse the memory) when
:func:`release` is called for it, or when nothing in this process references its memory
any more (the mapping is garbage-collected), or by its producer when its TTL passes.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

from ..errors import SerializationError
from . import arrow, ipc
from .arena import HEADER, HEADER_BYTES, IN_USE, MAGIC, RELEASED, STATE_OFFSET
from .handle import INLINE_TAG, TRANSPORTS, Handle, is_handle, is_inline
from .host import host_id
from .mapped import Region

_lock = threading.Lock()
_received: dict[int, tuple[weakref.ref[Any], Mapping]] = {}


class Mapping:
    """This process's read-only mapping of one producer segment, and its release switch.

    Holds no reference to the mapped data: once nothing in this process does (no buffer of
    the table or array), the data is unmapped and the value released by itself."""

    def __init__(self, handle: Handle, header: Region, data: Region) -> None:
        self.handle = handle
        self._switch = _Switch(handle.id, header)
        self._data = weakref.ref(data)
        weakref.finalize(data, self._switch.release)

    def release(self) -> bool:
        """Tell the producer this process is done with the value (idempotent)."""
        return self._switch.release()

    @property
    def mapped(self) -> bool:
        """Whether the data is still mapped in this process."""
        return self._data() is not None

    def address_range(self) -> tuple[int, int]:
        """``(start, end)`` of the mapped data in this process's address space."""
        data = self._data()
        if data is None:
            return 0, 0
        return data.address, data.address + data.length


class _Switch:
    """The header page of a producer segment: writes RELEASED into it, once."""

    def __init__(self, handle_id: str, header: Region) -> None:
        self._id = handle_id.encode()
        self._header: Region | None = header
        self._lock = threading.Lock()

    def release(self) -> bool:
        with self._lock:
            header, self._header = self._header, None
        if header is None:
            return False
        try:
            if header.read(0, 8) == MAGIC and header.read(16, 32) == self._id:
                header.write_byte(STATE_OFFSET, RELEASED)
        finally:
            header.close()
        return True


def resolve(value: Any, transport: str = "auto", received: list[Any] | None = None) -> Any:
    """``value`` with every handle and inline Arrow object in it (dicts and lists, in place)
    replaced by the table or array it stands for (each also appended to ``received``)."""
    if transport not in TRANSPORTS:
        raise SerializationError(f"zero_copy_transport must be one of {', '.join(TRANSPORTS)}")

    def made(wire: dict[str, Any]) -> Any:
        found = materialize(wire, transport)
        if received is not None:
            received.append(found)
        return found

    if is_handle(value) or is_inline(value):
        return made(value)
    stack = [value] if isinstance(value, (dict, list)) else []
    while stack:
        node = stack.pop()
        items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        for key, item in items:
            if is_handle(item) or is_inline(item):
                node[key] = made(item)
            elif isinstance(item, (dict, list)):
                stack.append(item)
    return value


def materialize(wire: dict[str, Any], transport: str = "auto") -> Any:
    """The value one handle or inline object stands for."""
    if is_inline(wire):
        data = wire[INLINE_TAG]
        if not isinstance(data, bytes):
            raise SerializationError("an inline Arrow value must hold bytes")
        pa = arrow.require("reading an Arrow value")
        return ipc.read(pa.py_buffer(data))
    try:
        handle = Handle.from_wire(wire)
    except ValueError as exc:
        raise SerializationError(f"bad zero-copy handle: {exc}") from None
    arrow.require("reading a zero-copy value")
    tried: list[str] = []
    if transport in ("auto", "shm"):
        if handle.has_shm and handle.host == host_id():
            try:
                table, mapping = open_shm(handle)
            except SerializationError as exc:
                if transport == "shm" or not handle.flight:
                    raise
                tried.append(f"shared memory: {exc.message}")
            else:
                value = ipc.from_arrow(table)
                _remember(value, mapping)
                return value
        else:
            tried.append("shared memory: the value lives on another host" if handle.has_shm
                         else "shared memory: not offered by its producer")
    if transport in ("auto", "flight"):
        if handle.flight:
            from .flight import fetch

            return ipc.from_arrow(fetch(handle))
        tried.append("Arrow Flight: not offered by its producer")
    raise SerializationError(
        f"zero-copy value {handle.id} ({handle.kind}, {handle.size} bytes, owned by "
        f"{handle.owner}) cannot be read with zero_copy_transport={transport!r}: "
        + "; ".join(tried),
        {"handle": handle.id, "transport": transport, "tried": tried},
    )


def open_shm(handle: Handle) -> tuple[Any, Mapping]:
    """Map ``handle``'s segment read-only: the Arrow table in it (buffers inside the
    mapping, nothing copied) and the :class:`Mapping`. SerializationError when the value
    is gone (its owner ended, released it or let it expire)."""
    pa = arrow.require("reading a zero-copy value")
    path = f"/proc/{handle.pid}/fd/{handle.fd}"
    gone = (f"zero-copy value {handle.id} is gone: its owner ({handle.owner}, pid "
            f"{handle.pid}) ended, released it or let it expire")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise SerializationError(f"{gone} ({exc.strerror})", {"handle": handle.id}) from None
    try:
        raw = os.pread(fd, HEADER.size, 0)
        if len(raw) < HEADER.size:
            raise SerializationError(gone, {"handle": handle.id})
        magic, state, ident, length = HEADER.unpack(raw)
        if magic != MAGIC or ident != handle.id.encode() or state != IN_USE or (
                length != handle.size) or os.fstat(fd).st_size < HEADER_BYTES + length:
            raise SerializationError(gone, {"handle": handle.id})
        header = Region(fd, HEADER_BYTES, writable=True)
        data = Region(fd, length, offset=HEADER_BYTES)
    except OSError as exc:
        raise SerializationError(f"{gone} (mmap: {exc.strerror})", {"handle": handle.id}
                                 ) from None
    finally:
        os.close(fd)
    mapping = Mapping(handle, header, data)
    try:
        buffer = pa.foreign_buffer(data.address, data.length, base=data)
        del data  # the buffers own it now: unmapped (and released) with the last of them
        reader = pa.ipc.open_stream(pa.BufferReader(buffer))
        table = reader.read_all()
    except Exception as exc:
        mapping.release()
        raise SerializationError(
            f"zero-copy value {handle.id} is not a readable Arrow stream: {exc}",
            {"handle": handle.id}) from None
    return table, mapping


def _remember(value: Any, mapping: Mapping) -> None:
    key = id(value)

    def forget(_: Any) -> None:
        with _lock:
            entry = _received.get(key)
            if entry is not None and entry[0]() is None:
                del _received[key]

    with _lock:
        _received[key] = (weakref.ref(value, forget), mapping)


def mapping_of(value: Any) -> Mapping | None:
    """The shared-memory mapping behind a received value (None for any other value)."""
    with _lock:
        entry = _received.get(id(value))
    if entry is None or entry[0]() is not value:
        return None
    return entry[1]


def release(value: Any) -> int:
    """Release received zero-copy values: ``value`` itself, or every one inside a dict,
    list or tuple. Returns how many were released. The values must not be read after."""
    if isinstance(value, dict):
        return sum(release(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(release(v) for v in value)
    with _lock:
        entry = _received.get(id(value))
        if entry is None or entry[0]() is not value:
            return 0
        del _received[id(value)]
    return 1 if entry[1].release() else 0
