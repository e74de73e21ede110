"""The streaming caller API: callbacks, iterators, late readers, halting."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from .. import connections, keys
from ..app import default_app
from ..call import timeout_seconds
from ..caller import give_up, guarded, send
from ..errors import ExecutionTimeout, QueueTimeout, StreamTruncated
from . import entries
from .reader import reader_for

HALT_WAIT_SECONDS = 5.0
ACK_EVERY = 32


class _Halt:
    def __repr__(self) -> str:
        return "snakepit_tasks.HALT"


HALT = _Halt()
"""Return this from a stream callback to stop the stream (the worker stops the tool)."""


class Stream:
    """The chunks of one streaming call, in order; ``result`` holds the final result.

    Iterate it (each chunk is a dict with ``is_final`` and ``_metadata.seq``), or ``close()``
    it to stop the call early. A stream opened with :func:`stream_result` only reads: closing
    it does not stop the call; :meth:`cancel` does.
    """

    def __init__(
        self,
        call_id: str,
        app: Celery,
        deadline: float,
        *,
        after: int = 0,
        owner: bool = True,
        async_result: AsyncResult | None = None,
        pool: str | None = None,
    ) -> None:
        self.call_id = call_id
        self.app = app
        self.deadline = deadline
        self.owner = owner
        self.async_result = async_result
        self.result: Any = None
        self.done = False
        self.pool = pool
        self.limit = max(0.0, deadline - time.time())  # the call's timeout, for messages
        self._started = False
        self._seq = after
        settings = app.snakepit_settings
        self._redis = connections.redis_client(settings.redis_url)
        self._reader = reader_for(settings.redis_url)
        self._key = keys.stream(call_id)
        self._queue = self._reader.subscribe(self._key, keys.chunk_id(after))
        self._ack()  # a live reader: the node keeps within a window of it

    @property
    def id(self) -> str:
        """The call's task id (give it to a late reader)."""
        return self.call_id

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if self.done:
            raise StopIteration
        entry_id, fields = self._first_entry() if not self._started else self._next_entry(
            self.deadline
        )
        self._started = True
        if entries.FINAL in fields:
            self._finish(fields)
            raise StopIteration
        chunk = entries.to_chunk(entry_id, fields, self.call_id)
        seq = chunk["_metadata"]["seq"]
        if seq != self._seq + 1:
            self.done = True
            self._reader.unsubscribe(self._key)
            raise StreamTruncated(
                f"chunks {self._seq + 1}..{seq - 1} of stream {self.call_id} were trimmed "
                "before this reader got them (stream_max_len / stream_retention)",
                {"task_id": self.call_id, "missing_from": self._seq + 1, "missing_to": seq - 1},
            )
        self._seq = seq
        if seq % ACK_EVERY == 0 or self._queue.empty():  # every so often, and when caught up
            self._ack()
        return chunk

    def _ack(self) -> None:
        """Tell the node how far this reader got (it stays within a window ahead)."""
        ttl = max(60, int(self.deadline - time.time()) + 60)
        self._redis.set(keys.stream_ack(self.call_id), self._seq, ex=ttl)

    def _first_entry(self) -> tuple[bytes, dict[bytes, bytes]]:
        # A call that no worker takes within pool_queue_timeout fails and never runs.
        settings = self.app.snakepit_settings
        queue_deadline = time.time() + settings.pool_queue_timeout / 1000
        if self.owner and queue_deadline < self.deadline:
            try:
                return self._queue.get(timeout=settings.pool_queue_timeout / 1000)
            except queue.Empty:
                pool = self.pool or settings.default_pool_name
                if give_up(self.app, self.call_id, pool):
                    self.done = True
                    self._reader.unsubscribe(self._key)
                    raise QueueTimeout(
                        f"no worker took streaming call {self.call_id} within "
                        f"pool_queue_timeout ({settings.pool_queue_timeout} ms); it will not run",
                        {"task_id": self.call_id},
                    ) from None
        return self._next_entry(self.deadline)

    def _next_entry(self, deadline: float) -> tuple[bytes, dict[bytes, bytes]]:
        remaining = deadline - time.time()
        try:
            if remaining <= 0:
                raise queue.Empty
            return self._queue.get(timeout=remaining)
        except queue.Empty:
            self.done = True
            self._reader.unsubscribe(self._key)
            if self.owner:
                self.cancel()
            raise ExecutionTimeout(
                f"streaming call {self.call_id} did not finish within its timeout of "
                f"{self.limit:.3g} s; pass a larger timeout= if it needs longer",
                {"task_id": self.call_id, "timeout": self.limit},
            ) from None

    def _finish(self, fields: dict[bytes, bytes]) -> None:
        self.done = True
        self._reader.unsubscribe(self._key)
        self.result = entries.outcome(fields)  # raises the call's error, if any

    def cancel(self) -> None:
        """Ask the worker to stop this call."""
        ttl = max(60, int(self.deadline - time.time()) + 60)
        self._redis.set(keys.stream_cancel(self.call_id), b"1", ex=ttl)

    def close(self) -> None:
        """Stop reading; if this caller started the call, stop it and wait until the worker
        confirms (so the worker is free when this returns)."""
        if self.done:
            return
        if not self.owner:
            self.done = True
            self._reader.unsubscribe(self._key)
            return
        self.cancel()
        wait_until = min(self.deadline, time.time() + HALT_WAIT_SECONDS)
        try:
            while not self.done:
                _, fields = self._next_entry(wait_until)
                if entries.FINAL in fields:
                    self._finish(fields)
        except Exception:
            self.done = True

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _app(app: Celery | None) -> Celery:
    return app or default_app()


def stream(
    command: str,
    args: dict[str, Any] | None = None,
    *,
    pool: str | None = None,
    timeout: float | None = None,
    session_id: str | None = None,
    affinity: str | None = None,
    app: Celery | None = None,
) -> Stream:
    """Start a streaming call; iterate the returned :class:`Stream` for its chunks."""
    the_app = _app(app)
    settings = the_app.snakepit_settings
    deadline = time.time() + timeout_seconds(timeout, settings.pool_streaming_timeout)
    result = send(
        the_app, command, args,
        pool=pool, timeout=timeout, deadline=deadline, stream=True, session_id=session_id,
        affinity=affinity,
    )
    return Stream(result.id, the_app, deadline, async_result=result, pool=pool)


def execute_stream(
    command: str,
    args: dict[str, Any] | None,
    callback: Callable[[dict[str, Any]], Any],
    *,
    pool: str | None = None,
    timeout: float | None = None,
    session_id: str | None = None,
    affinity: str | None = None,
    app: Celery | None = None,
) -> Any:
    """Call ``callback(chunk)`` for each chunk in order; return the final result.

    The callback stops the stream by returning :data:`HALT` (the result is then
    ``{"halted": True, "chunks": n}``) or by raising (the exception propagates).
    """
    the_app = _app(app)

    def run() -> Any:
        call = stream(
            command, args, pool=pool, timeout=timeout, session_id=session_id,
            affinity=affinity, app=the_app,
        )
        for chunk in call:
            try:
                verdict = callback(chunk)
            except BaseException:
                call.close()
                raise
            if verdict is HALT:
                call.close()
                break
        return call.result

    return guarded(the_app, pool, command, run)


def execute_in_session_stream(
    session_id: str,
    command: str,
    args: dict[str, Any] | None,
    callback: Callable[[dict[str, Any]], Any],
    *,
    pool: str | None = None,
    timeout: float | None = None,
    affinity: str | None = None,
    app: Celery | None = None,
) -> Any:
    """:func:`execute_stream` on the worker that holds session ``session_id``."""
    return execute_stream(
        command, args, callback, pool=pool, timeout=timeout, session_id=session_id,
        affinity=affinity, app=app,
    )


def stream_in_session(
    session_id: str,
    command: str,
    args: dict[str, Any] | None = None,
    *,
    pool: str | None = None,
    timeout: float | None = None,
    affinity: str | None = None,
    app: Celery | None = None,
) -> Stream:
    """:func:`stream` on the worker that holds session ``session_id``."""
    return stream(
        command, args, pool=pool, timeout=timeout, session_id=session_id, affinity=affinity,
        app=app,
    )


def stream_result(
    task_id: str,
    *,
    after: int = 0,
    timeout: float | None = None,
    app: Celery | None = None,
) -> Stream:
    """Read a streaming call started elsewhere, from its first chunk or after chunk ``after``."""
    the_app = _app(app)
    seconds = timeout_seconds(timeout, the_app.snakepit_settings.pool_streaming_timeout)
    return Stream(task_id, the_app, time.time() + seconds, after=after, owner=False)
