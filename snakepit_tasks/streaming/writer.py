"""Node side: appends a call's chunks to its Redis stream and notices a caller's cancel."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import redis

from .. import keys, telemetry
from ..errors import SnakepitError
from . import entries

log = logging.getLogger("snakepit_tasks.streaming")

BATCH = 500
IDLE_CHECK_SECONDS = 0.2
_STOP = object()


class ChunkWriter:
    """Writes chunks from a background thread, pipelining whatever has accumulated.

    :meth:`put` blocks when ``max_pending`` chunks are waiting, which slows the gRPC reader
    and through flow control the adapter itself: a slow Redis never grows memory unbounded.
    """

    def __init__(
        self,
        r: redis.Redis,
        call_id: str,
        *,
        max_len: int,
        retention: int,
        ttl: int,
        max_pending: int = 1000,
    ) -> None:
        self.r = r
        self.call_id = call_id
        self.key = keys.stream(call_id)
        self.cancel_key = keys.stream_cancel(call_id)
        self.ack_key = keys.stream_ack(call_id)
        # Never write more than max_len chunks past what a live reader acknowledged, so the
        # stream is never trimmed under it; write in batches of at most half that.
        self.batch = max(1, min(BATCH, max_len // 2))
        self._acked: int | None = None  # the reader's position, once one is attached
        self.max_len = max_len
        self.retention = retention
        self.ttl = max(ttl, retention)
        self.cancelled = threading.Event()
        self.last_seq = 0
        self._queue: queue.Queue[Any] = queue.Queue(max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="snakepit-chunks", daemon=True)
        self._thread.start()

    def put(self, seq: int, data: bytes) -> None:
        """Queue chunk ``seq`` (JSON bytes) for the stream."""
        self._queue.put((seq, data))

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=IDLE_CHECK_SECONDS)
            except queue.Empty:
                self._check_cancel()
                continue
            batch = [item]
            while len(batch) < self.batch and item is not _STOP:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(item)
            chunks = [b for b in batch if b is not _STOP]
            if chunks:
                self._flush(chunks)
            if batch[-1] is _STOP:
                return

    def _flush(self, chunks: list[tuple[int, bytes]]) -> None:
        if self._acked is not None and chunks[-1][0] - self._acked > self.max_len:
            self._wait_for_reader(chunks[-1][0])
        try:
            with self.r.pipeline(transaction=False) as pipe:
                for seq, data in chunks:
                    pipe.xadd(
                        self.key,
                        entries.chunk_fields(data),  # type: ignore[arg-type]
                        id=keys.chunk_id(seq),
                        maxlen=self.max_len,
                        approximate=True,
                    )
                pipe.expire(self.key, self.ttl)
                pipe.exists(self.cancel_key)
                pipe.get(self.ack_key)
                replies = pipe.execute()
            self.last_seq = chunks[-1][0]
            if replies[-2]:
                self.cancelled.set()
            self._acked = None if replies[-1] is None else int(replies[-1])
        except redis.RedisError as exc:
            self._error = exc
            log.warning("could not write chunks of %s: %s", self.key, exc)

    def _wait_for_reader(self, upto: int) -> None:
        """Backpressure: before writing up to chunk ``upto``, pause (and with the bounded
        queue, gRPC flow control pauses the tool) until the reader is within the window, it
        goes away, or the call is cancelled. The stream is then never trimmed under it."""
        began = time.monotonic()
        try:
            self._wait_within_window(upto)
        finally:
            telemetry.emit(("snakepit", "stream", "backpressure"),
                           {"waited_ms": (time.monotonic() - began) * 1000},
                           {"call_id": self.call_id})

    def _wait_within_window(self, upto: int) -> None:
        while not self.cancelled.is_set():
            time.sleep(0.02)
            try:
                with self.r.pipeline(transaction=False) as pipe:
                    pipe.get(self.ack_key)
                    pipe.exists(self.cancel_key)
                    acked, cancel = pipe.execute()
            except redis.RedisError:
                return
            if cancel:
                self.cancelled.set()
            self._acked = None if acked is None else int(acked)
            if self._acked is None or upto - self._acked <= self.max_len:
                return

    def _check_cancel(self) -> None:
        try:
            if self.r.exists(self.cancel_key):
                self.cancelled.set()
        except redis.RedisError:
            pass

    def _close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()

    def _final(self, fields: dict[bytes, bytes]) -> None:
        with self.r.pipeline(transaction=False) as pipe:
            pipe.xadd(self.key, fields, id=keys.chunk_id(self.last_seq + 1))  # type: ignore[arg-type]
            pipe.expire(self.key, self.retention)
            pipe.delete(self.cancel_key, self.ack_key)
            pipe.execute()

    def finish(self, result: Any) -> None:
        """Flush every chunk, then append the final entry with ``result``."""
        self._close()
        self._final(entries.final_fields(result))

    def fail(self, exc: SnakepitError) -> None:
        """Flush every chunk, then append the final entry with ``exc``."""
        self._close()
        try:
            self._final(entries.error_fields(exc))
        except redis.RedisError:
            log.warning("could not write the final entry of %s", self.key)
