"""The heap of a process that fetches values through Arrow Flight, kept warm across fetches.

gRPC receives every Flight message into memory from ``malloc``, and the fetched table's
buffers are that memory. glibc hands freed memory back to the kernel at once (it trims the
heap as soon as more than a few MiB lie free at its top), so each fetch of a large value
faulted all its pages in anew: about a third of the reader's CPU for 256 MiB on loopback
(see bench/zero_copy.py). :func:`retain_for` lets this process keep up to the largest value
it fetched of freed memory (capped at :data:`RETAIN_MAX_BYTES`) for the next fetch, the
reader's counterpart of the producer's pre-faulted arena. Only glibc is tuned; elsewhere it
does nothing. The process's heap may stay that much larger after a value is released.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import platform
import threading
from collections.abc import Callable

log = logging.getLogger("snakepit_tasks.zero_copy")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks from this size on get a mapping of their own (glibc's own ceiling for it): each
#: Flight message, a few MiB, comes from the heap.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
#: Never keep more freed memory than this for the next fetch.
RETAIN_MAX_BYTES = 1024 * 1024 * 1024
#: Kept on top of a value's size (gRPC's receive buffers and messages in transit).
SLACK_BYTES = 64 * 1024 * 1024

_lock = threading.Lock()
_retained = 0


def retain_for(nbytes: int) -> int:
    """Let this process keep freed heap memory for a fetch of ``nbytes`` (and the next
    ones); returns the bytes it may now keep (0 where malloc cannot be tuned). Never lowers
    what an earlier call allowed."""
    global _retained
    wanted = min(RETAIN_MAX_BYTES, max(0, nbytes) + SLACK_BYTES)
    with _lock:
        if wanted <= _retained:
            return _retained
        mallopt = _mallopt()
        if mallopt is None:
            return 0
        if not _retained and not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
            return 0
        if mallopt(M_TRIM_THRESHOLD, wanted):
            _retained = wanted
            log.debug("zero-copy: heap keeps up to %d freed bytes for Flight fetches", wanted)
        return _retained


@functools.lru_cache(maxsize=1)
def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt`` (None on any other C library)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        function = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int]
    function.restype = ctypes.c_int
    return function
