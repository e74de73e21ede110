"""The shared-memory arena of one producing process: pre-faulted segments reused across
transfers.

Each segment is an anonymous memory file (``memfd_create``): it has no name in /dev/shm,
so nothing is left behind whoever is killed; the kernel frees it once the last process
that maps it or holds its descriptor is gone. Another process on the host opens it as
``/proc/<pid>/fd/<fd>`` while this process holds it.

Layout: one header page (magic, state, handle id, data length), then the data. A consumer
done with a value writes RELEASED into the state byte; the arena then reuses the segment
for the next transfer, its pages already faulted in (a fresh file costs about 14 times a
memcpy in page faults; see bench/zero_copy.py). A handle that expires unreleased retires
its segment instead: this process closes it, and a late reader keeps valid data (its own
mapping holds the pages) rather than seeing the next transfer's. Free segments unused for
``idle_ms`` are closed too.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field

from ..errors import SerializationError

log = logging.getLogger("snakepit_tasks.zero_copy")

MAGIC = b"SPZC0001"
HEADER_BYTES = 4096  # one page: the data starts page-aligned
HEADER = struct.Struct("<8sB7x32sQ")  # magic, state, padding, handle id (hex), data length
STATE_OFFSET = 8
IN_USE, RELEASED = 0, 1
SEGMENT_ALIGN = 2 * 1024 * 1024
MEMFD_NAME = "snakepit-zc"
SWEEP_SECONDS = 0.5


def supported() -> bool:
    """Whether this platform has anonymous memory files and ``/proc/<pid>/fd``."""
    return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


@dataclass(eq=False)
class Segment:
    """One memory file, mapped read-write by its owner."""

    fd: int
    capacity: int  # data bytes (after the header)
    map: mmap.mmap
    handle_id: str = ""
    length: int = 0
    expires_at: float = 0.0
    idle_since: float = field(default_factory=time.monotonic)

    @property
    def data(self) -> memoryview:
        """The data area, ``length`` bytes of it when in use."""
        return memoryview(self.map)[HEADER_BYTES : HEADER_BYTES + (self.length or self.capacity)]

    def released(self) -> bool:
        return self.map[STATE_OFFSET] == RELEASED

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:  # a view of it is still alive in this process: the GC unmaps it
            log.debug("segment fd %d still viewed; left to the garbage collector", self.fd)
        os.close(self.fd)


class Arena:
    """Segments for the values this process hands out, keyed by handle id. Thread-safe."""

    def __init__(self, idle_ms: int = 30_000) -> None:
        self.idle_ms = idle_ms
        self._lock = threading.Lock()
        self._free: list[Segment] = []
        self._used: dict[str, Segment] = {}
        self._sweeper: threading.Thread | None = None
        self._wake = threading.Event()

    # -- producing -----------------------------------------------------------------------
    def allocate(self, length: int, ttl_ms: int) -> Segment:
        """A segment of at least ``length`` data bytes, marked in use by a new handle id
        until it is released or ``ttl_ms`` pass. Reuses a free segment when one fits."""
        if not supported():
            raise SerializationError("zero-copy shared memory needs Linux (memfd and /proc)")
        with self._lock:
            self._sweep_locked()
            segment = self._take_free_locked(length)
        if segment is None:
            segment = _new_segment(length)
        segment.handle_id = uuid.uuid4().hex
        segment.length = length
        segment.expires_at = time.time() + ttl_ms / 1000
        HEADER.pack_into(segment.map, 0, MAGIC, IN_USE, segment.handle_id.encode(), length)
        with self._lock:
            self._used[segment.handle_id] = segment
            self._ensure_sweeper_locked()
        return segment

    def get(self, handle_id: str) -> Segment | None:
        """The in-use segment of ``handle_id`` (None once released, expired or unknown)."""
        with self._lock:
            segment = self._used.get(handle_id)
            if segment is None or segment.released() or segment.expires_at <= time.time():
                return None
            return segment

    def release(self, handle_id: str) -> bool:
        """Mark ``handle_id`` released (its consumer is done): the segment is reused."""
        with self._lock:
            segment = self._used.get(handle_id)
            if segment is None:
                return False
            segment.map[STATE_OFFSET] = RELEASED
            self._sweep_locked()
            return True

    def discard(self, handle_id: str) -> None:
        """Retire ``handle_id``'s segment now (a transfer that failed half-way)."""
        with self._lock:
            segment = self._used.pop(handle_id, None)
        if segment is not None:
            segment.close()

    # -- accounting ----------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Segments and bytes in use and free."""
        with self._lock:
            self._sweep_locked()
            return {
                "used": len(self._used),
                "used_bytes": sum(s.capacity for s in self._used.values()),
                "free": len(self._free),
                "free_bytes": sum(s.capacity for s in self._free),
            }

    def close(self) -> None:
        """Close every segment (values already mapped elsewhere stay valid there)."""
        with self._lock:
            segments = [*self._free, *self._used.values()]
            self._free.clear()
            self._used.clear()
        for segment in segments:
            segment.close()
        self._wake.set()

    # -- internals -----------------------------------------------------------------------
    def _take_free_locked(self, length: int) -> Segment | None:
        fitting = [s for s in self._free if length <= s.capacity <= 2 * length + SEGMENT_ALIGN]
        if not fitting:
            return None
        segment = min(fitting, key=lambda s: s.capacity)
        self._free.remove(segment)
        return segment

    def _sweep_locked(self) -> None:
        """Released segments become free; expired ones, and free ones idle too long, close."""
        now, clock = time.time(), time.monotonic()
        closing: list[Segment] = []
        for handle_id, segment in list(self._used.items()):
            if segment.released():
                del self._used[handle_id]
                segment.handle_id, segment.length, segment.idle_since = "", 0, clock
                self._free.append(segment)
            elif segment.expires_at <= now:
                del self._used[handle_id]
                log.info("zero-copy value %s expired unreleased; its memory is freed once "
                         "no reader maps it", handle_id)
                closing.append(segment)
        idle = self.idle_ms / 1000
        for segment in list(self._free):
            if clock - segment.idle_since >= idle:
                self._free.remove(segment)
                closing.append(segment)
        for segment in closing:
            segment.close()

    def _ensure_sweeper_locked(self) -> None:
        if self._sweeper is None or not self._sweeper.is_alive():
            self._sweeper = threading.Thread(
                target=self._sweep_forever, name="snakepit-zero-copy", daemon=True)
            self._sweeper.start()

    def _sweep_forever(self) -> None:
        while not self._wake.wait(SWEEP_SECONDS):
            with self._lock:
                self._sweep_locked()
                if not self._used and not self._free:
                    self._sweeper = None
                    return


def _new_segment(length: int) -> Segment:
    """A new memory file of at least ``length`` data bytes, every page faulted in now."""
    capacity = -(-length // SEGMENT_ALIGN) * SEGMENT_ALIGN or SEGMENT_ALIGN
    fd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, HEADER_BYTES + capacity)
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        mapped = mmap.mmap(fd, HEADER_BYTES + capacity, flags=flags,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as exc:
        os.close(fd)
        raise SerializationError(
            f"could not allocate {capacity} bytes of shared memory for a zero-copy value: "
            f"{exc}", {"bytes": capacity}
        ) from None
    return Segment(fd=fd, capacity=capacity, map=mapped)
