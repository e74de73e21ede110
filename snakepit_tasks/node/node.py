"""A node: the Celery worker process that hosts one pool's workers on this host."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import string
import threading
import time
from typing import Any

from .. import keys, replies, scripts, state
from .._proto import bridge_pb2 as pb
from ..config import PoolConfig, Settings
from ..errors import (
    AdapterError,
    QueueTimeout,
    SessionQuotaExceeded,
    SessionWorkerUnavailable,
    SnakepitError,
    WorkerBusy,
    WorkerCrashed,
)
from ..resilience import HealthMonitor
from ..sessions import CLEANUP_COMMAND
from ..streaming.writer import ChunkWriter
from .worker import AdapterWorker
from .workerset import NodeDraining, WorkerGone, WorkerSet

log = logging.getLogger("snakepit_tasks.node")

_ALPHABET = string.ascii_lowercase + string.digits
CALL_STATE_MARGIN_MS = 60_000


def new_run_id() -> str:
    """A short random id for one run of a node (7 base-36 characters)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(7))


class Redirect(Exception):  # noqa: N818 - control flow, never reaches a caller
    """The call's session lives on another node's worker: send the call there."""

    def __init__(self, worker_id: str, node: str) -> None:
        super().__init__(worker_id, node)
        self.worker_id = worker_id
        self.node = node


class Node:
    """Owns the workers of a node, runs calls on them, and tells Redis about them."""

    def __init__(
        self, settings: Settings, pool: PoolConfig, name: str, count: int | None = None
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.name = name
        self.run_id = new_run_id()
        self.started_at = time.time()
        self.redis = state.redis_client(settings.redis_url)
        self.workers = WorkerSet(
            settings,
            pool,
            name,
            count=count,
            run_id=self.run_id,
            instance=settings.instance_name,
            on_exit=self._worker_exited,
        )
        self.lease = state.NodeLease(
            self.redis,
            name,
            pool.name,
            settings.node_lease_ttl_ms,
            settings.node_lease_interval_ms,
            self._describe,
        )
        self._start_call = scripts.script(self.redis, "start_call")
        self._give_up_call = scripts.script(self.redis, "give_up_call")
        self._shutdown_timer: threading.Timer | None = None
        self.janitor: Any = None
        self.health = HealthMonitor(pool.name, redis=self.redis, settings=settings)

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers (ready before this returns); :meth:`publish` advertises them."""
        started = time.monotonic()
        self.redis.delete(keys.busy(self.name))
        self.workers.start()
        log.info(
            "node %s: %d %s worker(s) of %s ready in %.0f ms",
            self.name,
            len(self.workers.workers),
            self.pool.worker_profile,
            self.pool.adapter,
            (time.monotonic() - started) * 1000,
        )

    def publish(self, app: Any = None) -> None:
        """Advertise this node in Redis and keep the lease fresh until :meth:`stop`; with the
        Celery ``app``, also take a turn at cleaning up after dead nodes of the pool."""
        self.lease.start()
        if app is not None:
            from .janitor import Janitor

            self.janitor = Janitor(self, app)
            self.janitor.start()

    def begin_shutdown(self) -> None:
        """Celery is shutting down: calls not started go back to their queues; calls in
        flight get the grace period, then their workers are killed."""
        self.workers.drain()
        grace = self.settings.graceful_shutdown_timeout_ms / 1000
        self._shutdown_timer = threading.Timer(grace, self.workers.kill_all)
        self._shutdown_timer.daemon = True
        self._shutdown_timer.start()

    def stop(self) -> None:
        """Withdraw the lease and stop every worker."""
        if self._shutdown_timer:
            self._shutdown_timer.cancel()
        if self.janitor is not None:
            self.janitor.stop()
        self.lease.stop()
        self.workers.stop()
        try:
            self.redis.delete(keys.busy(self.name))
        except Exception:
            log.debug("could not clear busy counts", exc_info=True)

    # -- calls ---------------------------------------------------------------------------
    def run(
        self,
        command: str,
        args: Any,
        *,
        deadline: float,
        call_id: str,
        session_id: str = "",
        worker: str | None = None,
        affinity: str | None = None,
        fallback: bool = False,
        enqueued_at: float | None = None,
        stream: bool = False,
        reply: bool = False,
    ) -> Any:
        """Run one call: take a slot (honouring the session and the queue timeout), run the
        tool (streaming its chunks when asked), count it, and push the outcome to the caller
        when it waits for a direct ``reply``."""
        if command == CLEANUP_COMMAND:
            return self._cleanup_session(session_id, worker, deadline)
        try:
            slot = self._take_slot(
                call_id, session_id, worker, affinity, fallback, enqueued_at, deadline, command
            )
        except SnakepitError as exc:
            if stream:
                self._writer(call_id, deadline).fail(exc)
            # queue timeouts are counted where they are decided (give_up_call.lua)
            counted = 0 if isinstance(exc, QueueTimeout) else 1
            self._finish(call_id if reply else None, exc, errors=counted, requests=counted)
            raise
        writer = self._writer(call_id, deadline) if stream else None
        held = [slot]  # the slot this call holds now (a re-run may move it)
        outcome: Any = None
        failure: BaseException | None = None
        requeued = False
        try:
            call = {"deadline": deadline, "call_id": call_id, "session_id": session_id}
            if writer is None:
                outcome = self._execute_guarded(held, command, args, **call)
                return outcome
            outcome = self._stream_guarded(
                held, command, args, on_chunk=writer.put, cancelled=writer.cancelled, **call
            )
            writer.finish(outcome)
            return outcome
        except SnakepitError as exc:
            failure = exc
            if writer:
                writer.fail(exc)
            raise
        except NodeDraining:
            requeued = True  # goes back to its queue: no reply, no final entry yet
            raise
        except BaseException as exc:
            failure = SnakepitError(f"the call failed on the node: {exc!r}")
            if writer:
                writer.fail(failure)
            raise
        finally:
            last = held[0] if held else None
            if last is not None:
                self.workers.release(last)
            self._finish(
                call_id if reply and not requeued else None,
                failure,
                result=outcome,
                errors=1 if failure else 0,
                requests=0 if requeued else 1,
                busy_worker=last.worker_id if last is not None else None,
            )

    def _execute_guarded(self, held: list[AdapterWorker], command: str, args: Any,
                         **call: Any) -> Any:
        """Run on the held slot; if its process crashes and the tool is idempotent, run it
        again on another worker (at most ``crash_barrier_max_restarts`` times). A worker found
        dead before the call reached it just hands the call on: nothing ran."""
        reruns = 0
        while True:
            try:
                return self.workers.execute_on(held[0], command, args, **call)
            except WorkerGone:
                self._switch(held, call["deadline"])
            except WorkerCrashed:
                self._taint(held[0])  # at once: the caller may route again right away
                limit = self.settings.crash_barrier_max_restarts
                if not self.is_idempotent(command) or reruns >= limit:
                    raise
                reruns += 1
                crashed = held[0].worker_id
                self._switch(held, call["deadline"])
                log.warning("re-running idempotent %r of crashed %s on %s", command, crashed,
                            held[0].worker_id)

    def _stream_guarded(self, held: list[AdapterWorker], command: str, args: Any,
                        **call: Any) -> Any:
        """:meth:`_execute_guarded` for streams: only a worker found dead before the call
        reached it hands the call on (chunks already sent cannot be taken back)."""
        while True:
            try:
                return self.workers.stream_on(held[0], command, args, **call)
            except WorkerGone:
                self._switch(held, call["deadline"])

    def _switch(self, held: list[AdapterWorker], deadline: float) -> None:
        """Give up the held slot, then take one on another worker (or on the same one,
        restarted, when it is the node's only worker). Empties ``held`` if none comes."""
        old = held.pop()
        self.workers.release(old)
        self._move_busy(old.worker_id, None)
        others = len(self.workers.workers) > 1
        new = self.workers.acquire(deadline, exclude=old.worker_id if others else None)
        held.append(new)
        self._move_busy(None, new.worker_id)

    def is_idempotent(self, command: str) -> bool:
        """Whether this pool's adapter declares ``command`` idempotent (safe to re-run)."""
        for w in self.workers.workers:
            spec = w.tools.get(command)
            if spec is not None:
                return bool(spec.idempotent)
        return False

    def _move_busy(self, old: str | None, new: str | None) -> None:
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                if old:
                    pipe.hincrby(keys.busy(self.name), old, -1)
                if new:
                    pipe.hincrby(keys.busy(self.name), new, 1)
                pipe.execute()
        except Exception:
            log.debug("could not move busy count", exc_info=True)

    def _writer(self, call_id: str, deadline: float) -> ChunkWriter:
        return ChunkWriter(
            self.redis,
            call_id,
            max_len=self.settings.stream_max_len,
            retention=self.settings.stream_retention,
            ttl=int(max(0.0, deadline - time.time())) + self.settings.stream_retention,
        )

    def _take_slot(
        self,
        call_id: str,
        session_id: str,
        worker: str | None,
        affinity: str | None,
        fallback: bool,
        enqueued_at: float | None,
        deadline: float,
        command: str = "",
    ) -> AdapterWorker:
        queue_deadline = deadline
        if enqueued_at is not None:
            queue_deadline = min(deadline, enqueued_at + self.settings.pool_queue_timeout / 1000)
        if time.time() > queue_deadline:
            self._give_up(call_id)  # picked up too late: it never runs
            raise QueueTimeout(
                "the call waited longer than pool_queue_timeout and was not run",
                {"pool": self.pool.name},
            )
        ids = {w.worker_id for w in self.workers.workers}
        wanted = worker
        while True:
            if wanted is not None and wanted not in ids:
                raise SessionWorkerUnavailable(
                    f"worker {wanted} is not on node {self.name} any more",
                    {"worker_id": wanted, "session_id": session_id},
                )
            fail_fast = wanted is not None and affinity == "strict_fail_fast"
            try:
                try:
                    slot = self.workers.acquire(time.time(), wanted)
                except QueueTimeout:
                    if fail_fast:
                        raise
                    # It will wait here: say so, so a janitor can re-route it if we die.
                    self._mark_taken(call_id, deadline)
                    slot = self.workers.acquire(queue_deadline, wanted)
            except QueueTimeout:
                if fail_fast:
                    raise WorkerBusy(
                        f"worker {wanted} is busy (affinity strict_fail_fast)",
                        {"worker_id": wanted, "session_id": session_id},
                    ) from None
                self._give_up(call_id)
                raise
            status, bound, bound_node, new = self._claim(
                call_id,
                slot,
                session_id,
                bind=not fallback,
                deadline=deadline,
                rerun_ok=self.is_idempotent(command),
            )
            if status == "ok":
                if new and session_id:
                    self._initialize_session(slot, session_id)
                return slot
            self.workers.release(slot)
            if status == "timed_out":
                raise QueueTimeout(
                    "the call waited longer than pool_queue_timeout and was not run",
                    {"pool": self.pool.name},
                )
            if status == "duplicate":
                raise WorkerCrashed(
                    "this call was started before by a node that died; it is not run again "
                    "because the tool is not idempotent (declare @tool(idempotent=True) to "
                    "allow re-runs)",
                    {"call_id": call_id},
                )
            if status == "quota":
                raise SessionQuotaExceeded(
                    f"session {session_id!r} cannot start: session_max_sessions "
                    f"({self.settings.session_max_sessions}) sessions exist; end some with "
                    "snakepit_tasks.sessions.delete() or raise the limit",
                    {"session_id": session_id},
                )
            # moved: the session is bound to another worker
            if bound_node == self.name and bound in ids:
                wanted = bound
                continue
            raise Redirect(bound, bound_node)

    def _claim(
        self,
        call_id: str,
        slot: AdapterWorker,
        session_id: str,
        *,
        bind: bool,
        deadline: float,
        rerun_ok: bool = False,
    ) -> tuple[str, str, str, bool]:
        ttl_ms = int(max(0.0, deadline - time.time()) * 1000) + CALL_STATE_MARGIN_MS
        reply = self._start_call(
            keys=[
                keys.call_state(call_id),
                keys.session(session_id),
                keys.sessions(),
                keys.busy(self.name),
            ],
            args=[
                slot.worker_id,
                self.name,
                self.pool.name,
                repr(time.time()),
                self.settings.session_default_ttl,
                self.settings.session_max_sessions,
                session_id,
                "1" if bind else "0",
                ttl_ms,
                "1" if rerun_ok else "0",
            ],
        )
        status, bound, bound_node, new = (state.text(x) for x in reply)
        return status, bound, bound_node, new == "1"

    def _mark_taken(self, call_id: str, deadline: float) -> None:
        ttl_ms = int(max(0.0, deadline - time.time()) * 1000) + CALL_STATE_MARGIN_MS
        try:
            self.redis.set(keys.call_state(call_id), f"taken:{self.name}", nx=True, px=ttl_ms)
        except Exception:
            log.debug("could not mark call %s taken", call_id, exc_info=True)

    def _give_up(self, call_id: str) -> None:
        ttl_ms = CALL_STATE_MARGIN_MS
        self._give_up_call(
            keys=[keys.call_state(call_id), keys.pool_stats(self.pool.name)], args=[ttl_ms]
        )

    def _finish(
        self,
        reply_to: str | None,
        failure: BaseException | None,
        *,
        result: Any = None,
        errors: int = 0,
        requests: int = 1,
        busy_worker: str | None = None,
    ) -> None:
        """One round trip after a call: counters, busy count, and the caller's reply."""
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                if requests:
                    pipe.hincrby(keys.pool_stats(self.pool.name), "requests", requests)
                if errors:
                    pipe.hincrby(keys.pool_stats(self.pool.name), "errors", errors)
                if busy_worker:
                    pipe.hincrby(keys.busy(self.name), busy_worker, -1)
                if reply_to:
                    replies.push(pipe, reply_to, replies.encode_outcome(result, failure))
                pipe.execute()
        except Exception:  # bookkeeping must never fail a call; the backend still has it
            log.warning("could not record the end of call %s", reply_to, exc_info=True)

    def reply_failure(self, call_id: str, failure: BaseException) -> None:
        """Push a failure that happened before :meth:`run` to a waiting caller."""
        self._finish(call_id, failure, errors=1)

    def _session_rpc(self, slot: AdapterWorker, hook: str, session_id: str) -> None:
        assert slot.stub is not None
        rpc = getattr(slot.stub, hook)
        reply = rpc(pb.SessionRequest(session_id=session_id), timeout=30)
        if not reply.ok:
            raise AdapterError(
                f"{hook} of session {session_id!r} failed: {reply.error.type}: "
                f"{reply.error.message}",
                {"type": reply.error.type, "traceback": reply.error.traceback},
            )

    def _initialize_session(self, slot: AdapterWorker, session_id: str) -> None:
        self._session_rpc(slot, "InitializeSession", session_id)

    def _cleanup_session(self, session_id: str, worker: str | None, deadline: float) -> Any:
        slot = self.workers.acquire(deadline, worker)
        try:
            self._session_rpc(slot, "CleanupSession", session_id)
        finally:
            self.workers.release(slot)
        return {"session_id": session_id, "cleaned": True, "worker_id": slot.worker_id}

    # -- publishing ----------------------------------------------------------------------
    def _describe(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        fields = {
            "pool": self.pool.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "run_id": self.run_id,
            "instance": self.settings.instance_name,
            "started_at": self.started_at,
            "capacity": self.workers.capacity,
            "adapter": self.pool.adapter,
            "profile": self.pool.worker_profile,
        }
        return fields, self.workers.snapshot()

    def _taint(self, worker: AdapterWorker, how: str = "crashed") -> None:
        """Crash barrier: routing avoids ``worker`` for crash_barrier_taint_duration_ms."""
        if not self.settings.crash_barrier_enabled:
            return
        ms = self.settings.crash_barrier_taint_duration_ms
        self.workers.taint(worker.worker_id, ms / 1000)
        try:
            self.redis.set(keys.taint(worker.worker_id), how, px=ms)
        except Exception:
            log.debug("could not taint %s", worker.worker_id, exc_info=True)

    def _worker_exited(self, worker: AdapterWorker, how: str) -> None:
        """Crash barrier: taint the worker (routing avoids it for a while) and record it."""
        try:
            self.health.record_crash(worker.worker_id)
        except Exception:
            log.debug("could not record crash of %s", worker.worker_id, exc_info=True)
        self._taint(worker, how)
        if not self.lease.running:
            return
        try:
            self.lease.publish()
        except Exception:
            log.debug("could not publish lease", exc_info=True)
