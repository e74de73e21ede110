"""Which host-tool call the current thread serves, so a call back into the pool from inside a
host function can tell when it would wait on the very worker that waits for it."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import WorkerBusy


@dataclass(frozen=True)
class Serving:
    """A host-tool call in progress in this thread: who waits for it."""

    session_id: str
    tool: str
    worker_id: str
    capacity: int


_current: contextvars.ContextVar[Serving | None] = contextvars.ContextVar(
    "snakepit_host_tool", default=None
)


def current() -> Serving | None:
    """The host-tool call this thread serves, or None."""
    return _current.get()


@contextlib.contextmanager
def serving(call: Serving) -> Iterator[None]:
    """Mark this thread as serving ``call`` for the duration of the block."""
    token = _current.set(call)
    try:
        yield
    finally:
        _current.reset(token)


def check_reentry(session_id: str, worker_id: str, mode: str, busy: bool) -> None:
    """Raise WorkerBusy when a call of ``session_id`` made from inside a host function must
    run on worker ``worker_id`` (a strict affinity) while that busy worker is the one waiting
    for the host function: under ``strict_queue`` it would wait forever."""
    serving_now = _current.get()
    if (
        serving_now is None
        or mode == "hint"
        or not busy
        or serving_now.session_id != session_id
        or serving_now.worker_id != worker_id
    ):
        return
    raise WorkerBusy(
        f"re-entrant call: session {session_id!r} is bound to worker {worker_id}, which is "
        f"waiting for host tool {serving_now.tool!r} (this call); with affinity {mode} this "
        "call could only wait for it forever. Call back with affinity='hint' (another worker "
        "serves it), from another session, or after the host tool returns",
        {"session_id": session_id, "worker_id": worker_id, "host_tool": serving_now.tool,
         "reason": "reentrant"},
    )
