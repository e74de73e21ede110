"""Zero-copy transfer of large data: Arrow tables and record batches, numpy arrays and
DLPack arrays (torch tensors) as arguments and results.

    import snakepit_tasks as sp
    table = sp.execute("load_table", {"path": "..."})   # a pyarrow.Table, mapped, not copied
    with sp.zero_copy.hold(table) as t:                 # released when the block ends
        ...
    sp.execute("fit", {"x": np.ones((4096, 4096))})     # the array travels as a handle

A value of at least ``zero_copy_threshold_bytes`` (default 1 MiB) is written once, as an
Arrow IPC stream, into shared memory of the process that produced it (its arena: reused,
pre-faulted segments of anonymous memory files, see :mod:`.arena`), and the message
carries a small handle. A reader on the same host maps it (nothing copied: the table's
buffers and the array's memory lie in the mapping); a reader on another host, or one whose
``zero_copy_transport`` is ``"flight"``, streams it from Arrow Flight (the node serves
results; a caller serves its own arguments). Smaller tables travel inline as Arrow bytes,
smaller arrays as arguments too (results keep their JSON conversion).

A handle has an owner and a TTL (``zero_copy_ttl_ms``): the memory is reused once the
reader releases the value (:func:`release`, :func:`hold`, or by dropping every reference to
it), and freed when the TTL passes. Nothing is named in /dev/shm, so a killed process
leaves nothing behind. Needs pyarrow: ``pip install 'snakepit-tasks[arrow]'``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, TypeVar

from .handle import HANDLE_TAG, INLINE_TAG, TRANSPORTS, Handle, Options, is_handle, is_inline
from .host import host_id
from .receive import mapping_of, materialize, release, resolve

__all__ = [
    "HANDLE_TAG",
    "INLINE_TAG",
    "TRANSPORTS",
    "Handle",
    "Options",
    "hold",
    "host_id",
    "is_handle",
    "is_inline",
    "is_zero_copy",
    "mapping_of",
    "materialize",
    "release",
    "resolve",
]

T = TypeVar("T")


@contextlib.contextmanager
def hold(value: T) -> Iterator[T]:
    """``with hold(value) as v:`` — use a received value, then :func:`release` it."""
    try:
        yield value
    finally:
        release(value)


def is_zero_copy(value: Any) -> bool:
    """Whether ``value`` was received through shared memory (and is not yet released)."""
    return mapping_of(value) is not None
