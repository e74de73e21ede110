"""Caller side: one Redis connection per process reads the streams of every active call."""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from typing import Any

import redis

from .. import connections, keys

log = logging.getLogger("snakepit_tasks.streaming")

BLOCK_MS = 10_000

EntryQueue = queue.Queue[tuple[bytes, dict[bytes, bytes]]]


class StreamReader:
    """Blocks in one XREAD on all subscribed call streams and fans entries out to queues.

    Subscribing wakes the blocked read by appending to this reader's own wake stream, so a
    new call's first chunk is not delayed by the block timeout.
    """

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=None)
        self.notify = connections.redis_client(url)
        self.wake_key = keys.reader_wake(uuid.uuid4().hex)
        self._subs: dict[str, list[Any]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def subscribe(self, key: str, after: str = "0-0") -> EntryQueue:
        """Deliver the entries of stream ``key`` after entry id ``after`` to a new queue."""
        q: EntryQueue = queue.Queue()
        with self._lock:
            self._subs[key] = [after, q]
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="snakepit-stream-reader", daemon=True
                )
                self._thread.start()
        self._wake()
        return q

    def unsubscribe(self, key: str) -> None:
        """Stop delivering ``key``."""
        with self._lock:
            self._subs.pop(key, None)

    def _wake(self) -> None:
        with self.notify.pipeline(transaction=False) as pipe:
            pipe.xadd(self.wake_key, {b"w": b"1"}, maxlen=1)
            pipe.expire(self.wake_key, 60)
            pipe.execute()

    def _run(self) -> None:
        wake_last: bytes | str = "0-0"
        failing = False
        while True:
            with self._lock:
                streams: dict[Any, Any] = {k: v[0] for k, v in self._subs.items()}
            streams[self.wake_key] = wake_last
            try:
                reply: Any = self.client.xread(streams, count=1000, block=BLOCK_MS)
            except redis.RedisError as exc:
                idle = len(streams) == 1  # only the wake stream: no call waits for chunks
                if failing or idle:
                    log.debug("stream reader: %s; retrying", exc)
                else:
                    log.warning("stream reader: %s; retrying", exc)
                    failing = True
                time.sleep(0.5)
                continue
            if failing:
                log.warning("stream reader: Redis is back")
                failing = False
            for raw_key, items in reply or ():
                key = connections.text(raw_key)
                if key == self.wake_key:
                    wake_last = items[-1][0]
                    continue
                with self._lock:
                    sub = self._subs.get(key)
                    if sub is None:
                        continue
                    sub[0] = items[-1][0]
                for entry_id, fields in items:
                    sub[1].put((entry_id, fields))


_readers: dict[str, StreamReader] = {}
_readers_lock = threading.Lock()


def reader_for(url: str) -> StreamReader:
    """This process's reader for the Redis at ``url``."""
    with _readers_lock:
        reader = _readers.get(url)
        if reader is None:
            reader = _readers[url] = StreamReader(url)
        return reader
