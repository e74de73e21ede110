"""The fast lane, node side: take synchronous calls from Redis lists and run them.

Each list (the pool's, and this node's) has a small crew of threads that take turns as its
leader: the leader moves one message atomically into the node's processing list (``BLMOVE``),
hands the leadership to the next thread, and runs the call itself, so a call never waits for
a hand-off to another thread. The pool list's crew has one thread per slot and its leader
takes a message only while a slot is free that no taken call is about to use, so a busy node
leaves the pool's calls to its peers; the node list's crew (two threads per slot, like the
Celery lane's thread pool) takes calls pinned to this node's workers. The processing entry
goes in the pipeline that pushes the reply. The janitor recovers the processing list and node
list of a node that died; a stopping node puts the calls it has not started back at the head
of their list.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import redis

from .. import fast_lane, keys, routing
from ..call import Call
from ..errors import SnakepitError
from ..telemetry import tracing
from .claim import DuplicateCopy, Redirect
from .slots import NodeDraining
from .task_events import TaskEvents

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("snakepit_tasks.node")

BLOCK_SECONDS = 1


class FastLane:
    """The fast-lane consumers of one node.

    ``threads`` is how many calls of the node list may run (or wait for their pinned worker)
    at once; the pool list runs at most one call per slot. ``events`` (set by the worker
    bootstep) sends Celery task events for the calls, so Flower sees them.
    """

    def __init__(self, node: Node, threads: int) -> None:
        self.node = node
        self.r: redis.Redis = node.redis
        self.processing = keys.fast_processing(node.name)
        self.sources = (keys.fast_pool_queue(node.pool.name), keys.fast_node_queue(node.name))
        self.events = TaskEvents(lambda: None)
        self._crews = (max(1, node.workers.capacity), max(1, threads))
        self._leaders = (threading.Lock(), threading.Lock())
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Condition()
        self._pending = 0  # pool-list calls taken, not yet running
        self._inflight = 0  # calls taken and not finished

    def start(self) -> None:
        """Start consuming both lists."""
        for index, source in enumerate(self.sources):
            for n in range(self._crews[index]):
                thread = threading.Thread(
                    target=self._serve, args=(source, index == 0, self._leaders[index]),
                    daemon=True, name=f"snakepit-fast-{'pool' if index == 0 else 'node'}-{n}",
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
        """Wait for the consumers to leave (each finishes the call it runs)."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _serve(self, source: str, gated: bool, leader: threading.Lock) -> None:
        while not self._stop.is_set():
            if not leader.acquire(timeout=BLOCK_SECONDS):
                continue
            try:
                raw = self._take(source, gated)
            finally:
                leader.release()  # the next thread of the crew waits for the next call
            if raw is None:
                continue
            if self._stop.is_set():
                self._put_back(source, raw)
                self._release_gate(gated)
                self._ended()
                return
            self._run(source, raw, gated)

    def _take(self, source: str, gated: bool) -> bytes | None:
        """One message moved into the processing list, or None (nothing within a block)."""
        if gated and not self._pass_gate():
            return None
        try:
            raw: Any = self.r.blmove(source, self.processing, BLOCK_SECONDS, "RIGHT", "LEFT")
        except redis.RedisError:
            log.debug("fast lane: Redis unavailable; retrying", exc_info=True)
            raw = None
            self._stop.wait(BLOCK_SECONDS)
        if raw is None:
            self._release_gate(gated)
            return None
        with self._lock:
            self._inflight += 1
        return bytes(raw)

    def _run(self, source: str, raw: bytes, gated: bool) -> None:
        self._release_gate(gated)
        try:
            self._handle(source, raw)
        except Exception:
            log.exception("fast lane: a call failed on the node")
        finally:
            self._ended()

    def _ended(self) -> None:
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
        call_id, trace = "", dict[str, str]()
        try:
            call_id, kwargs, trace = fast_lane.decode_traced(raw)
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
        events = self.events.active()
        if events is not None:
            self.events.received(events, call_id, call)
            self.events.started(events, call_id)
        began = time.perf_counter()
        try:
            with tracing.span(f"snakepit.node {call.command}", {
                "snakepit.call_id": call_id, "snakepit.pool": call.pool,
                "snakepit.node": node.name, "snakepit.lane": "fast",
            }, kind="consumer", context=tracing.extract(trace) if trace else None):
                result = node.run(call, call_id, on_finish=lambda pipe: self._forget(pipe, raw))
            if events is not None:
                self.events.succeeded(events, call_id, result, time.perf_counter() - began)
        except NodeDraining:
            self._put_back(source, raw)
            if events is not None:
                self.events.rejected(events, call_id)
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
        except SnakepitError as exc:
            # answered by Node.run, processing entry removed with the reply
            if events is not None:
                self.events.failed(events, call_id, exc)

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
