"""The janitor: one live node per pool (under a Redis lock) cleans up after dead nodes.

A dead node's queue is consumed by nobody, and Redis restores its unacknowledged messages
back into queues after ``visibility_timeout``. For every such message the janitor either
drops it (the call had its outcome before the node died), re-routes it to the pool queue
(safe: not started, and no strict session), or fails it in the result backend (and to a
waiting caller) with SessionWorkerUnavailable or WorkerCrashed, so nobody waits on PENDING for
ever and no call gets a second outcome. It keeps watching a dead node's queue for
``visibility_timeout`` after the death (then removes its session bindings), clears its taints
and busy counts, and records the backlog it found.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from celery import states

from .. import connections, fast_lane, keys, kombu_redis, lua, replies, session_store, telemetry
from ..call import Call
from ..errors import SessionWorkerUnavailable, SnakepitError, WorkerCrashed
from ..kombu_redis import UndecodableMessage
from ..streaming import entries
from .fast_lane import call_of as fast_call_of
from .feed import settle as settle_intake

if TYPE_CHECKING:
    from celery import Celery

    from .node import Node

log = logging.getLogger("snakepit_tasks.janitor")

SWEEP_SECONDS = 1.0


class Janitor:
    """Runs on every node; acts only while it holds the pool's janitor lock."""

    def __init__(self, node: Node, app: Celery) -> None:
        self.node = node
        self.app = app
        self.r = node.redis
        self.pool = node.pool.name
        self._stop = threading.Event()
        self._warned = False
        self._release_taken = lua.script(self.r, "release_taken")
        self._thread = threading.Thread(target=self._run, name="snakepit-janitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            lock = keys.janitor_lock(self.pool)
            if connections.text(self.r.get(lock) or b"") == self.node.name:
                self.r.delete(lock)
        except Exception:
            pass

    def _run(self) -> None:
        next_session_check = 0.0
        while not self._stop.wait(SWEEP_SECONDS):
            try:
                if not self._hold_lock():
                    continue
                self.sweep()
                if time.monotonic() >= next_session_check:
                    self.check_sessions()
                    interval = self.node.settings.session_cleanup_interval / 1000
                    next_session_check = time.monotonic() + interval
            except Exception:
                log.warning("janitor sweep failed", exc_info=True)

    def check_sessions(self) -> int:
        """Prune expired sessions from the index (every ``session_cleanup_interval``) and warn
        once the count reaches ``session_warning_threshold`` of the quota; returns the count."""
        settings = self.node.settings
        pruned = session_store.prune(self.r, time.time() - settings.session_default_ttl)
        if pruned:
            telemetry.emit(("snakepit", "session", "expired"), {"count": pruned},
                           {"pool": self.pool})
        count = session_store.count(self.r)
        limit = settings.session_max_sessions
        near = count >= settings.session_warning_threshold * limit
        if near and not self._warned:
            telemetry.emit(("snakepit", "session", "quota_warning"),
                           {"count": count, "limit": limit},
                           {"pool": self.pool, "threshold": settings.session_warning_threshold})
            log.warning(
                "%d of session_max_sessions (%d) sessions exist (session_warning_threshold "
                "%.2f); new sessions fail with SessionQuotaExceeded at the limit",
                count, limit, settings.session_warning_threshold,
            )
        self._warned = near
        return count

    def _hold_lock(self) -> bool:
        lock, ttl = keys.janitor_lock(self.pool), int(SWEEP_SECONDS * 5000)
        if self.r.set(lock, self.node.name, nx=True, px=ttl):
            return True
        if connections.text(self.r.get(lock) or b"") == self.node.name:
            self.r.pexpire(lock, ttl)
            return True
        return False

    # -- the sweep -------------------------------------------------------------------------
    def sweep(self) -> dict[str, int]:
        """One pass over the pool's dead nodes; returns the backlog found per dead node."""
        now = time.time()
        members = [connections.text(n) for n in self.r.smembers(keys.pool_nodes(self.pool))]
        with self.r.pipeline(transaction=False) as pipe:
            for name in members:
                pipe.exists(keys.node_lease(name))
            alive = pipe.execute()
        dead = [n for n, up in zip(members, alive, strict=True) if not up and n != self.node.name]
        raw_watched = self.r.hgetall(keys.dead_nodes(self.pool))
        watched = {connections.text(k): float(v) for k, v in raw_watched.items()}
        backlog: dict[str, int] = {}
        for name in dead:
            if name not in watched:
                watched[name] = now
                self.r.hset(keys.dead_nodes(self.pool), name, now)
                log.warning("node %s of pool %s is dead; taking over its queue", name, self.pool)
                telemetry.emit(("snakepit", "janitor", "node_dead"), {},
                               {"pool": self.pool, "node": name, "janitor": self.node.name})
                self._forget_workers(name)
            taken = settle_intake(self.r, self.pool, name)  # back to its queues first
            backlog[name] = taken + self._drain(name) + self._drain_fast(name)
        if dead:
            seen_dead_at = max(watched[n] for n in dead)
            lease_s = self.node.settings.node_lease_ttl_ms / 1000
            self._recover_unacked(set(dead), min(seen_dead_at, time.time() - lease_s))
        for name, since in watched.items():
            if name in dead and now - since > self.node.settings.visibility_timeout + 60:
                self._forget_sessions(name)
                self.r.srem(keys.pool_nodes(self.pool), name)
                self.r.hdel(keys.dead_nodes(self.pool), name)
                self.r.hdel(keys.dead_backlog(self.pool), name)
            elif name not in dead:  # came back, or removed
                self.r.hdel(keys.dead_nodes(self.pool), name)
        if backlog:
            self.r.hset(keys.dead_backlog(self.pool), mapping=backlog)  # type: ignore[arg-type]
        return backlog

    def _drain(self, node: str) -> int:
        """Handle every message waiting in a dead node's queue; return how many there were."""
        count = 0
        for suffix in kombu_redis.PRIORITY_SUFFIXES:
            queue = keys.node_queue(node) + suffix
            while True:
                raw: Any = self.r.rpop(queue)  # oldest first: kombu publishes with LPUSH
                if raw is None:
                    break
                count += 1
                self._handle(bytes(raw), started=False)
        return count

    def settle_previous_run(self) -> None:
        """Run by a node before it consumes anything: settle what an earlier run under the
        same name left behind (the pool's janitor never sees a node dead that came back
        before its lease expired). Messages it had taken but not started go back to their
        queues; calls it had started or finished are handled as a dead node's; its fast-lane
        calls in progress likewise (those pinned to it wait for it in its queue)."""
        me, started = self.node.name, self.node.started_at
        settle_intake(self.r, self.pool, me)
        for taken in fast_taken(me):
            while (raw := self.r.rpop(taken)) is not None:
                self._handle_fast(bytes(raw), taken=True)  # type: ignore[arg-type]
        self._recover_unacked({me}, started, delivered_before=started)

    def _recover_unacked(
        self, dead: set[str], stale_before: float, *, delivered_before: float | None = None
    ) -> None:
        """Messages a dead node had taken but not acknowledged: decide now rather than when
        Redis restores them after visibility_timeout (only those delivered before
        ``delivered_before`` when given: a node's previous run).

        A message with no call state at all was received by a node that died before it
        marked the call (a live node marks or starts a call moments after it receives it):
        one from this pool's queues, delivered before ``stale_before`` (the latest death seen,
        and longer ago than a lease lasts), is re-routed too. Should a live node hold it after
        all, start_call.lua still lets only one of the two copies start."""
        index: Any = self.r.zrange(kombu_redis.UNACKED_INDEX, 0, -1, withscores=True)
        delivered: dict[Any, float] = dict(index)
        queues = {keys.pool_queue(self.pool), *(keys.node_queue(n) for n in dead)}
        for tag, entry in self.r.hgetall(kombu_redis.UNACKED).items():
            if delivered_before is not None and delivered.get(tag, 0.0) >= delivered_before:
                continue
            try:
                raw = kombu_redis.unacked_message(entry)
                message, kwargs = kombu_redis.decode_message(raw)
                call = Call.parse((), kwargs)
            except (UndecodableMessage, SnakepitError):
                continue
            call_id = kombu_redis.message_id(message)
            call_state = connections.text(self.r.get(keys.call_state(call_id)) or b"")
            kind, _, holder = call_state.partition(":")
            owner = holder if kind in ("started", "done") else None  # the node that ran it
            taker = holder if kind == "taken" else None  # the node that held it, not started
            queued_for_dead = bool(call.worker) and any(
                (call.worker or "").startswith(n + "/") for n in dead
            )
            abandoned = not call_state and _routing_key(message) in queues and (
                delivered.get(tag, float("inf")) < stale_before
            )
            if owner not in dead and taker not in dead and not abandoned and not (
                owner is None and queued_for_dead
            ):
                continue
            # Take it out of kombu's hands first, so it is never restored as well.
            with self.r.pipeline(transaction=True) as pipe:
                pipe.hdel(kombu_redis.UNACKED, tag)
                pipe.zrem(kombu_redis.UNACKED_INDEX, tag)
                removed = pipe.execute()[0]
            if removed:
                self._handle(raw, started=owner is not None, taken_by=taker,
                             finished=kind == "done")

    def _handle(
        self, raw: bytes, *, started: bool, taken_by: str | None = None, finished: bool = False
    ) -> None:
        try:
            message, kwargs = kombu_redis.decode_message(raw)
            call = Call.parse((), kwargs)
        except (UndecodableMessage, SnakepitError) as exc:
            log.error("janitor: dropping an undecodable message (%s): %r", exc, raw[:200])
            return
        call_id = kombu_redis.message_id(message)
        if started and self._has_outcome(call_id, call, finished=finished):
            log.info("janitor: call %s (%s) had its outcome before its node died; dropped its "
                     "message", call_id, call.command)
            return
        if finished:  # ran, but its node died before Celery stored the result
            self._fail(call_id, call, WorkerCrashed(
                f"the node that ran call {call.command!r} died before its result was stored; "
                "it is not run again", {"call_id": call_id}))
            return
        refusal = self._verdict(call, call_id, started)
        if refusal is not None:
            self._fail(call_id, call, refusal)
            return
        rerouted = self._rerouted(call, call_id, taken_by)
        pool_queue = keys.pool_queue(call.pool or self.pool)
        self.r.rpush(  # runs next
            pool_queue, kombu_redis.encode_message(message, rerouted.to_kwargs(), pool_queue)
        )
        log.info("janitor: re-routed call %s (%s) to %s", call_id, call.command, pool_queue)
        telemetry.emit(("snakepit", "janitor", "rerouted"), {}, {
            "call_id": call_id, "tool": call.command, "pool": self.pool, "queue": pool_queue})

    def _has_outcome(self, call_id: str, call: Call, *, finished: bool) -> bool:
        """Whether a call that a dead node started already has its one outcome: stored in the
        result backend, a stream's final entry (then stored in the backend too, so every reader
        agrees), or a direct reply pushed when it finished (``done:<node>``)."""
        if self.app.backend.get_task_meta(call_id, cache=False)["status"] in states.READY_STATES:
            return True
        if call.stream:
            last: Any = self.r.xrevrange(keys.stream(call_id), count=1)
            fields: dict[bytes, bytes] = last[0][1] if last else {}
            if entries.FINAL in fields:
                try:
                    self.app.backend.mark_as_done(call_id, entries.outcome(fields))
                except SnakepitError as exc:
                    self.app.backend.mark_as_failure(call_id, exc)
                return True
        return finished and call.reply

    def _drain_fast(self, node: str) -> int:
        """The dead node's fast-lane calls: those it had taken (its landing and processing
        lists), then those pinned to it; returns how many there were."""
        count = 0
        lists = [*((key, True) for key in fast_taken(node)), (keys.fast_node_queue(node), False)]
        for key, taken in lists:
            while True:
                raw: Any = self.r.rpop(key)  # oldest first
                if raw is None:
                    break
                count += 1
                self._handle_fast(bytes(raw), taken=taken)
        return count

    def _handle_fast(self, raw: bytes, *, taken: bool) -> None:
        try:
            call_id, call = fast_call_of(raw)
        except (ValueError, RecursionError, SnakepitError) as exc:
            log.error("janitor: dropping an undecodable fast-lane message (%s): %r", exc,
                      raw[:200])
            return
        kind, holder = "", ""
        if taken:
            state = connections.text(self.r.get(keys.call_state(call_id)) or b"")
            kind, _, holder = state.partition(":")
        refusal = self._verdict(call, call_id, started=kind == "started")
        if refusal is not None:
            self._fail(call_id, call, refusal, backend=False)
            return
        rerouted = self._rerouted(call, call_id, holder if kind == "taken" else None)
        queue = keys.fast_pool_queue(call.pool or self.pool)
        self.r.rpush(queue, fast_lane.encode(call_id, rerouted))  # runs next
        log.info("janitor: re-routed fast-lane call %s (%s) to %s", call_id, call.command, queue)

    def _verdict(self, call: Call, call_id: str, started: bool) -> SnakepitError | None:
        """Why a dead node's call must fail rather than run elsewhere (None: re-route it)."""
        session_id = call.session_id
        if session_id and call.affinity in ("strict_queue", "strict_fail_fast"):
            return SessionWorkerUnavailable(
                f"session {session_id!r} was bound to {call.worker}, whose node died "
                f"(affinity {call.affinity})", {"session_id": session_id})
        if started and not self.node.is_idempotent(call.command):
            return WorkerCrashed(
                f"the node running call {call.command!r} died; it is not re-run because the "
                "tool is not idempotent", {"call_id": call_id})
        return None

    def _rerouted(self, call: Call, call_id: str, taken_by: str | None) -> Call:
        """The call as it goes back to its pool: its wait for a worker starts again (a node
        would otherwise see it as having waited too long already)."""
        if taken_by:  # the dead node's mark goes, so later sweeps do not take it again
            self._release_taken(keys=[keys.call_state(call_id)], args=[taken_by])
        return call.replace(worker=None, fallback=False, enqueued_at=time.time())

    def _fail(self, call_id: str, call: Call, exc: SnakepitError, *, backend: bool = True) -> None:
        log.warning("janitor: failing call %s: %s", call_id, exc)
        telemetry.emit(("snakepit", "janitor", "failed"), {}, {
            "call_id": call_id, "tool": call.command, "pool": self.pool,
            "error": type(exc).__name__})
        if backend:
            self.app.backend.mark_as_failure(call_id, exc)
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hincrby(keys.pool_stats(self.pool), "errors", 1)
            if call.reply:
                replies.push(pipe, call_id, replies.encode_outcome(error=exc))
            if call.stream:
                pipe.xadd(keys.stream(call_id), entries.error_fields(exc),  # type: ignore[arg-type]
                          id="*")
                pipe.expire(keys.stream(call_id), self.node.settings.stream_retention)
            pipe.execute()

    def _forget_workers(self, node: str) -> None:
        """Remove a dead node's taints and busy counts."""
        taints = list(self.r.scan_iter(match=keys.taint(node + "/*")))
        if taints:
            self.r.delete(*taints)
        self.r.delete(keys.busy(node))

    def _forget_sessions(self, node: str) -> None:
        """Remove the session bindings to a dead node's workers. Until then strict callers
        learn their worker is gone (SessionWorkerUnavailable) instead of silently starting
        over elsewhere; hint callers re-bind on their next call."""
        for info in session_store.list_sessions(self.r, self.pool):
            if info.get("node") == node:
                session_store.unbind(self.r, info["session_id"])


def _routing_key(message: dict[str, Any]) -> str:
    """The queue a kombu envelope was delivered from ('' when it does not say)."""
    properties = message.get("properties")
    info = properties.get("delivery_info") if isinstance(properties, dict) else None
    key = info.get("routing_key") if isinstance(info, dict) else None
    return key if isinstance(key, str) else ""


def fast_taken(node: str) -> list[str]:
    """The lists of fast-lane calls ``node`` had taken: its crews' landing lists (a message
    is there only between a take's BLMOVE and its script, in one round trip) and its
    processing list."""
    return [*(keys.fast_landing(node, crew) for crew in keys.FAST_CREWS),
            keys.fast_processing(node)]
