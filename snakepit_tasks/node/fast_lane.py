"""The fast lane, node side: take synchronous calls from Redis lists and run them.

One dispatcher thread per list (the pool's, and this node's) moves a message atomically into
the node's processing list (``BLMOVE``) and hands it to a thread pool that runs it like a
Celery-lane call; the processing entry goes in the pipeline that pushes the reply. The pool
list's dispatcher takes a message only while a slot is free that no taken call is about to
use, so a busy node leaves the pool's calls to its peers. The janitor recovers the processing
list and node list of a node that died; a stopping node puts the calls it has not started back
at the head of their list.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import redis

from .. import fast_lane, keys, routing
from ..call import Call
from ..errors import SnakepitError
from .claim import DuplicateCopy, Redirect
from .slots import NodeDraining

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("snakepit_tasks.node")

BLOCK_SECONDS = 1


class FastLane:
    """The fast-lane consumers of one node."""

    def __init__(self, node: Node, threads: int) -> None:
        self.node = node
        self.r: redis.Redis = node.redis
        self.processing = keys.fast_processing(node.name)
        self.sources = (keys.fast_pool_queue(node.pool.name), keys.fast_node_queue(node.name))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Condition()
        self._pending = 0  # pool-list calls taken, not yet running
        self._inflight = 0  # calls handed to the runner and not finished
        self._runner = ThreadPoolExecutor(max(1, threads), thread_name_prefix="snakepit-fast")

    def start(self) -> None:
        """Start consuming both lists."""
        for source in self.sources:
            gated = source == self.sources[0]
            thread = threading.Thread(
                target=self._consume, args=(source, gated), daemon=True,
                name=f"snakepit-fast-{'pool' if gated else 'node'}",
            )
            thread.start()
            self._threads.append(thread)

    def stop_taking(self) -> None:
        """Take no new calls (calls running finish)."""
        self._stop.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the calls taken so far to end."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._inflight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
        return True

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the dispatchers to leave and the calls they handed on to end."""
        for thread in self._threads:
            thread.join(timeout)
        self._runner.shutdown(wait=True, cancel_futures=False)

    def _consume(self, source: str, gated: bool) -> None:
        while not self._stop.is_set():
            if gated and not self._pass_gate():
                continue
            try:
                raw: Any = self.r.blmove(source, self.processing, BLOCK_SECONDS, "RIGHT", "LEFT")
            except redis.RedisError:
                log.debug("fast lane: Redis unavailable; retrying", exc_info=True)
                raw = None
                self._stop.wait(BLOCK_SECONDS)
            if raw is None:
                self._release_gate(gated)
                continue
            if self._stop.is_set():
                self._put_back(source, bytes(raw))
                self._release_gate(gated)
                return
            with self._lock:
                self._inflight += 1
            self._runner.submit(self._run, source, bytes(raw), gated)

    def _run(self, source: str, raw: bytes, gated: bool) -> None:
        self._release_gate(gated)
        try:
            self._handle(source, raw)
        except Exception:
            log.exception("fast lane: a call failed on the node")
        finally:
            with self._lock:
                self._inflight -= 1
                self._lock.notify_all()

    def _release_gate(self, gated: bool) -> None:
        if gated:
            with self._lock:
                self._pending -= 1

    def _pass_gate(self) -> bool:
        """Wait for a slot no other pool-list consumer has claimed; reserve it."""
        if not self.node.workers.wait_for_free_slot(BLOCK_SECONDS, lambda: self._pending):
            return False
        with self._lock:
            self._pending += 1
        return True

    def _handle(self, source: str, raw: bytes) -> None:
        node = self.node
        call_id = ""
        try:
            call_id, kwargs = fast_lane.decode(raw)
            call = node.parse_call((), kwargs)
        except (ValueError, RecursionError, SnakepitError) as exc:
            self._done(raw)
            node.dead_letter(source, raw, str(exc), call_id,
                             error=exc if isinstance(exc, SnakepitError) else None)
            return
        if call.pool != node.pool.name:
            self._done(raw)
            node.dead_letter(source, raw, f"a call for pool {call.pool!r} reached pool "
                             f"{node.pool.name!r}", call_id)
            return
        try:
            node.run(call, call_id, on_finish=lambda pipe: self._forget(pipe, raw))
        except NodeDraining:
            self._put_back(source, raw)
        except Redirect as moved:
            # Lost the race to bind the session: to the bound worker (see Node.redirected).
            rerouted, target = node.redirected(call, moved)
            if target:
                queue = keys.fast_node_queue(target)
            else:
                try:
                    route = routing.prepare(node.settings, (), rerouted.to_kwargs())
                except SnakepitError as exc:
                    self._done(raw)
                    node.reply_failure(call_id, exc)
                    return
                queue, rerouted = route.fast_queue, route.call
            with self.r.pipeline(transaction=True) as pipe:
                pipe.lpush(queue, fast_lane.encode(call_id, rerouted))
                self._forget(pipe, raw)
                pipe.execute()
        except DuplicateCopy:
            self._done(raw)
        except SnakepitError:
            pass  # answered by Node.run, processing entry removed with the reply

    def _forget(self, pipe: Any, raw: bytes) -> None:
        """Queue the removal of ``raw`` from the processing list on ``pipe``."""
        pipe.lrem(self.processing, 1, raw)

    def _done(self, raw: bytes) -> None:
        with self.r.pipeline(transaction=False) as pipe:
            self._forget(pipe, raw)
            pipe.execute()

    def _put_back(self, source: str, raw: bytes) -> None:
        """Not started: back to the head of its list, for another node (or this one later)."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.rpush(source, raw)
            self._forget(pipe, raw)
            pipe.execute()


def call_of(raw: bytes) -> tuple[str, Call]:
    """The id and call of a fast-lane message (the janitor reads them back)."""
    call_id, kwargs = fast_lane.decode(raw)
    return call_id, Call.parse((), kwargs)


__all__: list[Any] = ["FastLane", "call_of"]
