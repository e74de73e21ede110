"""The fast lane, node side: take synchronous calls from Redis lists and run them.

Each list (the pool's, and this node's) has a small crew of threads that take turns as its
leader: the leader moves one message atomically into the node's processing list (``BLMOVE``),
hands the leadership to the next thread, and runs the call itself, so a call never waits for
a hand-off to another thread. The pool list's crew has one thread per slot and its leader
takes a message only while a slot is free that no taken call is about to use, so a busy node
leaves the pool's calls to its peers; the node list's crew (two threads per slot, like the
Celery lane's thread pool) takes calls pinned to this node's workers. The take claims the
call in the same round trip when it can (``broker/fast_take.lua`` behind the ``BLMOVE``, see
:mod:`.claim`), and the leader takes the slot it was claimed for before it hands the
leadership on. The processing entry goes in the pipeline that pushes the reply. The janitor
recovers the processing list and node list of a node that died; a stopping node puts the
calls it has not started back at the head of their list.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import redis

from .. import connections, fast_lane, keys, lua, resp, routing
from ..call import Call
from ..errors import SnakepitError
from ..telemetry import tracing
from .claim import DuplicateCopy, Held, Redirect
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
        self.landings = tuple((keys.fast_landing(node.name, crew), keys.fast_clock(node.name, crew))
                              for crew in keys.FAST_CREWS)
        self._marks = itertools.count(1)  # each take's clock mark (see fast_clock.lua)
        self._clock_script = lua.script(self.r, "fast_clock")
        self._take_script = lua.script(self.r, "fast_take")
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
        landing = self.landings[0 if gated else 1]
        while not self._stop.is_set():
            if not leader.acquire(timeout=BLOCK_SECONDS):
                continue
            try:
                taken = self._take(source, landing, gated)
            finally:
                leader.release()  # the next thread of the crew waits for the next call
            if taken is None:
                continue
            raw, held = taken
            if self._stop.is_set():
                if held is not None:
                    self.node.claims.hand_back(held)
                self._put_back(source, raw)
                self._release_gate(gated)
                self._ended()
                return
            self._run(source, raw, held, gated)

    def _take(
        self, source: str, landing: tuple[str, str], gated: bool
    ) -> tuple[bytes, Held | None] | None:
        """One message moved into the processing list, and when it was claimed in the same
        round trip the slot held for it; None when nothing came within a block."""
        if gated and not self._pass_gate():
            return None
        try:
            reply = self._move(source, landing)
        except redis.RedisError:
            log.debug("fast lane: Redis unavailable; retrying", exc_info=True)
            reply = None
            self._stop.wait(BLOCK_SECONDS)
        if reply is None or reply[1] is None:
            self._release_gate(gated)
            return None
        status, raw, worker_id = connections.text(reply[0]), bytes(reply[1]), reply[2]
        with self._lock:
            self._inflight += 1
        held = None
        if status == "ok":
            held = self.node.claims.hold(connections.text(reply[3]), connections.text(worker_id))
        return raw, held

    def _move(self, source: str, landing: tuple[str, str]) -> Any:
        """BLMOVE ``source`` into the ``landing`` list, with fast_clock.lua before it and
        fast_take.lua behind it, in one round trip: fast_take's reply."""
        into, clock = landing
        mark = str(next(self._marks))
        script_keys, args = self.node.claims.fast_take_args(into, clock, self.processing, mark)
        clock_script, take_script = self._clock_script, self._take_script
        marked, moved, reply = resp.round_trip(
            self.r, resp.pack("EVALSHA", clock_script.sha, 1, clock, mark),
            resp.pack("BLMOVE", source, into, "RIGHT", "LEFT", BLOCK_SECONDS),
            resp.pack("EVALSHA", take_script.sha, len(script_keys), *script_keys, *args))
        if isinstance(moved, Exception):
            raise moved
        if isinstance(marked, redis.exceptions.NoScriptError):  # Redis lost it (a restart)
            self.r.script_load(clock_script.script)  # for the next take; this one goes unmarked
        if isinstance(reply, redis.exceptions.NoScriptError):
            try:
                # EVAL also caches it for the next take's EVALSHA.
                reply = self.r.eval(take_script.script, len(script_keys), *script_keys, *args)
            except redis.ResponseError as exc:
                reply = exc
        if isinstance(reply, Exception):  # the message is the node's to claim, as it was
            log.warning("fast lane: fast_take.lua failed (%s); claiming as usual", reply)
            if moved is None:
                return [b"none", None, b""]
            self.r.lmove(into, self.processing, "RIGHT", "LEFT")
            return [b"skip", moved, b""]
        return reply

    def _run(self, source: str, raw: bytes, held: Held | None, gated: bool) -> None:
        self._release_gate(gated)
        try:
            self._handle(source, raw, held)
        except Exception:
            log.exception("fast lane: a call failed on the node")
        finally:
            if held is not None and not held.settled:
                self.node.claims.hand_back(held)
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

    def _handle(self, source: str, raw: bytes, held: Held | None = None) -> None:
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
                result = node.run(call, call_id, forget=(self.processing, raw), preclaimed=held)
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
