"""A node: the Celery worker process that hosts one pool's workers on this host."""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import string
import threading
import time
from typing import Any

from celery.exceptions import Ignore, Reject

from .. import (
    connections,
    dead_letters,
    hardware,
    keys,
    lua,
    replies,
    resp,
    serialization,
    telemetry,
)
from .._proto import bridge_pb2 as pb
from ..call import CLEANUP_COMMAND, Call
from ..config import PoolConfig, Settings
from ..errors import (
    AdapterError,
    ConfigurationError,
    DeadLettered,
    DeviceNotAvailable,
    QueueTimeout,
    SerializationError,
    SnakepitError,
    WorkerCrashed,
)
from ..queues import declare_queue
from ..resilience import HealthMonitor
from ..streaming import entries
from ..streaming.writer import ChunkWriter
from ..telemetry import hooks, tracing
from ..telemetry.metrics import NodeMetrics
from ..zero_copy.host import host_id
from . import lease
from .celery_finish import CeleryOutcome
from .claim import Claims, DuplicateCopy, Held, Redirect
from .fast_lane import FastLane
from .feed import IntakeFeed, settle
from .host_tools import HostToolsServer
from .janitor import Janitor
from .worker import AdapterWorker
from .workerset import NodeDraining, WorkerGone, WorkerSet
from .zero_copy import Relay
from .zygote import Zygote

log = logging.getLogger("snakepit_tasks.node")

_ALPHABET = string.ascii_lowercase + string.digits


def new_run_id() -> str:
    """A short random id for one run of a node (7 base-36 characters)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(7))


class Node:
    """Owns the workers of a node, runs calls on them, and tells Redis about them."""

    def __init__(
        self, settings: Settings, pool: PoolConfig, name: str, count: int | None = None,
        zygote: Zygote | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.name = name
        self.run_id = new_run_id()
        self.started_at = time.time()
        self.redis = connections.redis_client(settings.redis_url)
        self.relay = Relay(settings)
        self.capabilities: dict[str, Any] = {}
        self._capabilities_at = 0.0
        self.workers = WorkerSet(
            settings,
            pool,
            name,
            count=count,
            run_id=self.run_id,
            instance=settings.instance_name,
            on_exit=self._worker_exited,
            relay=self.relay,
            zygote=zygote,
        )
        self.host_tools = HostToolsServer(
            settings, pool, self.redis, os.path.join(self.workers.run_dir, "h.sock"),
            capacity=self.workers.capacity,
        )
        for w in self.workers.workers:
            w.host_tools_socket = self.host_tools.socket_path
        self.lease = lease.NodeLease(
            self.redis,
            name,
            pool.name,
            settings.node_lease_ttl_ms,
            settings.node_lease_interval_ms,
            self._describe,
        )
        self.workers.on_change = self.lease.changed  # status sees calls within moments
        self.claims = Claims(self.redis, settings, pool, name, self.workers)
        self.fast_lane = FastLane(self, threads=2 * self.workers.capacity)
        self.feed = IntakeFeed(self.redis, pool.name, name)
        self._shutdown_timer: threading.Timer | None = None
        self.janitor: Any = None
        self.app: Any = None  # the Celery app, once the node runs inside one
        self.health = HealthMonitor(pool.name, redis=self.redis, settings=settings)
        self.metrics: NodeMetrics | None = None

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers (ready before this returns); :meth:`publish` advertises them."""
        started = time.monotonic()
        # A host without what the pool requires refuses it (DeviceNotAvailable) at once.
        hardware.check_host(self.pool.name, self.pool.requires, self.pool.device)
        self.capabilities = hardware.capabilities()
        self._capabilities_at = time.monotonic()
        hooks.run(self.settings.telemetry_handlers, "telemetry_handlers")
        if self.settings.otel_enabled:
            tracing.enable(self.settings.otel_setup)
        if self.settings.metrics_port:
            self.metrics = NodeMetrics(self.settings, self.pool.name, self.name, self.redis,
                                       self._metrics_workers)
            self.metrics.start(self.settings.metrics_host, self.settings.metrics_port)
        self.redis.delete(keys.busy(self.name))
        try:
            self.workers.open_run_dir()
            self.host_tools.start()
            self.workers.start()
        except BaseException:
            self.host_tools.stop()
            self.workers.stop(grace=1.0)
            raise
        log.info(
            "node %s: %d %s worker(s) of %s ready in %.0f ms",
            self.name,
            len(self.workers.workers),
            self.pool.worker_profile,
            self.pool.adapter,
            (time.monotonic() - started) * 1000,
        )

    def settle_previous_run(self, app: Any) -> None:
        """Before this node consumes anything: settle what a previous run under the same name
        left (calls it had taken or started), then start feeding the Celery-lane consumer."""
        try:
            Janitor(self, app).settle_previous_run()
        except Exception:
            log.warning("node %s: could not settle its previous run's calls", self.name,
                        exc_info=True)
        self.feed.start()

    def publish(self, app: Any = None) -> None:
        """Advertise this node in Redis and keep the lease fresh until :meth:`stop`; with the
        Celery ``app``, also take a turn at cleaning up after dead nodes of the pool."""
        self.lease.start()
        self.fast_lane.start()
        if app is not None:
            self.app = app
            self.janitor = Janitor(self, app)
            self.janitor.start()

    def begin_shutdown(self) -> None:
        """Celery is shutting down: calls not started go back to their queues; calls in
        flight get the grace period, then their workers are killed."""
        self.fast_lane.stop_taking()
        self.feed.stop_feeding()
        self.workers.drain()
        grace = self.settings.graceful_shutdown_timeout_ms / 1000
        self._shutdown_timer = threading.Timer(grace, self.workers.kill_all)
        self._shutdown_timer.daemon = True
        self._shutdown_timer.start()

    def stop(self) -> None:
        """Withdraw the lease and stop every worker."""
        if self._shutdown_timer:
            self._shutdown_timer.cancel()
        self.fast_lane.stop_taking()
        # Celery waited for its own calls; the fast lane's get the same grace.
        self.fast_lane.wait_idle(self.settings.graceful_shutdown_timeout_ms / 1000)
        if self.janitor is not None:
            self.janitor.stop()
        self.feed.stop()
        try:  # what the feeders took and the consumer did not: back to its queues
            settle(self.redis, self.pool.name, self.name)
        except Exception:
            log.warning("node %s: could not put back the calls it had taken", self.name,
                        exc_info=True)
        self.lease.stop()
        self.workers.stop()
        self.fast_lane.join()
        self.host_tools.stop()
        self.relay.stop()
        if self.metrics is not None:
            self.metrics.stop()
        try:
            self.redis.delete(keys.busy(self.name))
        except Exception:
            log.debug("could not clear busy counts", exc_info=True)

    # -- calls ---------------------------------------------------------------------------
    def parse_call(self, args: Any, kwargs: Any) -> Call:
        """A call received from any queue, held to the caller API's rules (and sizes)."""
        call = Call.parse(
            args,
            kwargs,
            default_pool=self.pool.name,
            default_timeout_ms=self.settings.default_command_timeout,
            streaming_timeout_ms=self.settings.pool_streaming_timeout,
        )
        size = len(serialization.encode_args(call.args))
        if size > self.settings.max_call_bytes:
            raise SerializationError(
                f"the call's arguments are {size} bytes, over max_call_bytes "
                f"({self.settings.max_call_bytes})", {"size": size}
            )
        return call

    def run_task(self, task: Any, args: Any, kwargs: Any) -> Any:
        """Run the call a ``snakepit.execute`` task message carries (Celery lane)."""
        call_id = task.request.id or ""
        try:
            call = self.parse_call(args, kwargs)
        except SnakepitError as exc:
            # Anything can be pushed into a queue: refuse what the caller API would refuse.
            delivery = getattr(task.request, "delivery_info", None) or {}
            stream = isinstance(kwargs, dict) and kwargs.get("stream") is True
            self.dead_letter(
                str(delivery.get("routing_key") or keys.pool_queue(self.pool.name)),
                _message_preview(args, kwargs), str(exc), call_id, stream=stream, error=exc,
            )
            raise Ignore() from None
        if call.pool != self.pool.name:
            misrouted = ConfigurationError(
                f"a call for pool {call.pool!r} reached node {self.name} of pool "
                f"{self.pool.name!r}"
            )
            if call.reply:
                self.reply_failure(call_id, misrouted)
            raise misrouted
        try:
            with tracing.span(f"snakepit.node {call.command}", {
                "snakepit.call_id": call_id, "snakepit.pool": call.pool, "snakepit.node": self.name,
            }):
                return self.run(call, call_id,
                                celery=CeleryOutcome(task, call_id, self.settings))
        except DuplicateCopy as copy:
            # The live node that started this call answers it; this copy leaves no trace.
            log.debug("dropping a copy of call %s (started by %s)", call_id, copy.holder)
            raise Ignore() from None
        except NodeDraining:
            # Not started and this node is stopping: back to the queue for another node (a
            # pinned call's queue is then handled by the janitor once this node is gone).
            raise Reject(
                "node shutting down; the call goes back to its queue", requeue=True
            ) from None
        except Redirect as moved:
            # Lost a race to bind the session: to the session's worker, under the same task id
            # so the caller's AsyncResult still answers (routed afresh if its node is gone).
            rerouted, node = self.redirected(call, moved)
            options = {"queue": declare_queue(keys.node_queue(node))} if node else {}
            raise task.replace(
                task.signature((), rerouted.to_kwargs(), immutable=True, **options)
            ) from None

    def redirected(self, call: Call, moved: Redirect) -> tuple[Call, str | None]:
        """Where a call goes after losing the race to bind its session: pinned to the bound
        worker's node while that node lives; else back to routing (node None)."""
        if self.redis.exists(keys.node_lease(moved.node)):
            return call.replace(worker=moved.worker_id, fallback=False), moved.node
        return call.replace(worker=None, fallback=False), None

    def dead_letter(
        self,
        queue: str,
        raw: bytes | str,
        reason: str,
        call_id: str = "",
        *,
        stream: bool = False,
        error: SnakepitError | None = None,
    ) -> None:
        """Keep a message this node refused (never run), and tell a caller waiting on it."""
        log.error("node %s: refused a message from %s (kept as a dead letter): %s; %s",
                  self.name, queue, reason, dead_letters.preview(raw, 120))
        dead_letters.record(self.redis, self.pool.name, queue=queue, reason=reason, raw=raw,
                            call_id=call_id, node=self.name)
        telemetry.emit(("snakepit", "call", "dead_lettered"), {}, {
            "pool": self.pool.name, "node": self.name, "queue": queue, "call_id": call_id,
            "reason": reason})
        if not call_id:
            return
        if error is None:
            error = DeadLettered(
                f"node {self.name} could not accept call {call_id} from {queue}: {reason}; "
                "it was not run (see `snakepit-tasks status --dead-letters`)",
                {"call_id": call_id, "queue": queue},
            )
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(keys.pool_stats(self.pool.name), "errors", 1)
            replies.push(pipe, call_id, replies.encode_outcome(error=error))
            if stream:
                pipe.xadd(keys.stream(call_id), entries.error_fields(error),  # type: ignore[arg-type]
                          id="*")
                pipe.expire(keys.stream(call_id), self.settings.stream_retention)
            pipe.execute()
        if self.app is not None:
            self.app.backend.mark_as_failure(call_id, error)

    def run(
        self, call: Call, call_id: str, *, forget: tuple[str, bytes] | None = None,
        preclaimed: Held | None = None, celery: CeleryOutcome | None = None,
    ) -> Any:
        """Run one call: take a slot (honouring the session and the queue timeout), run the
        tool (streaming its chunks when asked), count it, and push the outcome to the caller
        when it waits for a direct ``reply``. ``forget``: (list, entry) removed with the outcome
        (the fast lane's processing entry); ``preclaimed``: the call was claimed when the fast
        lane took it, for that slot; ``celery``: a Celery-lane call's result and
        acknowledgement, which go into the same finish when they can
        (:mod:`snakepit_tasks.node.celery_finish`)."""
        deadline = float(call.deadline or time.time())
        session_id = call.session_id or ""
        stream, reply = call.stream, call.reply
        if call.command == CLEANUP_COMMAND:
            return self._cleanup_session(session_id, call.worker, deadline)
        claimed = None
        try:
            self._check_requires(call)
            claimed = self.claims.take(call, call_id, rerun_ok=self.is_idempotent(call.command),
                                       held=preclaimed)
            labels = {"call_id": call_id, "tool": call.command, "pool": self.pool.name,
                      "node": self.name, "worker_id": claimed.slot.worker_id,
                      "session_id": session_id}
            if claimed.new_session:
                telemetry.emit(("snakepit", "session", "bound"), {}, {
                    "session_id": session_id, "pool": self.pool.name, "node": self.name,
                    "worker_id": claimed.slot.worker_id})
                self._initialize_session(claimed.slot, session_id)
        except (DuplicateCopy, Redirect, NodeDraining):
            raise
        except Exception as failed:
            exc = failed if isinstance(failed, SnakepitError) else SnakepitError(
                f"the call failed on node {self.name} before it ran: {failed!r}",
                {"type": type(failed).__name__},
            )
            if not isinstance(failed, SnakepitError):
                log.exception("call %s failed before it ran", call_id)
            if stream:
                self._writer(call_id, deadline).fail(exc)
            if claimed is not None:  # the session hook failed: the slot goes back
                self.workers.release(claimed.slot)
            # queue timeouts are counted where they are decided (give_up_call.lua)
            counted = 0 if isinstance(exc, QueueTimeout) else 1
            if not counted:
                telemetry.emit(("snakepit", "call", "queue_timeout"),
                               {"timeout_ms": self.settings.pool_queue_timeout},
                               {"call_id": call_id, "tool": call.command, "pool": self.pool.name})
            self._finish(
                call_id if reply else None, exc, errors=counted, requests=counted,
                busy_worker=claimed.slot.worker_id if claimed is not None else None,
                forget=forget, celery=celery,
            )
            raise exc from None
        slot = claimed.slot
        queued_ms = (time.time() - call.enqueued_at) * 1000 if call.enqueued_at else 0.0
        telemetry.emit(("snakepit", "call", "dispatched"), {"queue_time_ms": queued_ms}, labels)
        began = time.perf_counter_ns()
        writer = self._writer(call_id, deadline) if stream else None
        held = [slot]  # the slot this call holds now (a re-run may move it)
        outcome: Any = None
        failure: BaseException | None = None
        requeued = False
        try:
            command, args = call.command, call.args
            where = {"deadline": deadline, "call_id": call_id, "session_id": session_id,
                     "timeout": call.timeout or deadline - (call.enqueued_at or deadline)}
            if writer is None:
                outcome = self._execute_guarded(held, command, args, **where)
                return outcome
            outcome = self._stream_guarded(
                held, command, args, on_chunk=writer.put, cancelled=writer.cancelled, **where
            )
            return outcome
        except SnakepitError as exc:
            failure = exc
            raise
        except NodeDraining:
            requeued = True  # goes back to its queue: no reply, no final entry yet
            raise
        except BaseException as exc:
            failure = SnakepitError(f"the call failed on the node: {exc!r}")
            raise
        finally:
            last = held[0] if held else None
            if last is not None:
                self.workers.release(last)
            if not requeued:
                telemetry.emit(("snakepit", "call", "executed"),
                               {"duration_us": (time.perf_counter_ns() - began) // 1000},
                               {**labels, "worker_id": last.worker_id if last else None,
                                "success": failure is None, "streaming": stream,
                                "error": type(failure).__name__ if failure else None})
            self._finish(
                call_id if reply and not requeued else None,
                failure,
                result=outcome,
                errors=1 if failure else 0,
                requests=0 if requeued else 1,
                busy_worker=last.worker_id if last is not None else None,
                ran=None if requeued else call_id,
                forget=None if requeued else forget,
                celery=None if requeued else celery,
            )
            # The stream's final entry last: a reader that sees it finds the worker free.
            if writer is not None and not requeued:
                if failure is None:
                    writer.finish(outcome)
                else:
                    writer.fail(failure if isinstance(failure, SnakepitError)
                                else SnakepitError(str(failure)))

    def _execute_guarded(self, held: list[AdapterWorker], command: str, args: Any,
                         **call: Any) -> Any:
        """Run on the held slot; if its process crashes and the tool is idempotent, run it
        again on another worker (at most ``crash_barrier_max_restarts`` times). A worker found
        dead before the call reached it just hands the call on: nothing ran."""
        reruns = 0
        while True:
            try:
                return self.workers.calls.execute(held[0], command, args, **call)
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
                return self.workers.calls.stream(held[0], command, args, **call)
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

    def _finish(
        self,
        reply_to: str | None,
        failure: BaseException | None,
        *,
        result: Any = None,
        errors: int = 0,
        requests: int = 1,
        busy_worker: str | None = None,
        ran: str | None = None,
        forget: tuple[str, bytes] | None = None,
        celery: CeleryOutcome | None = None,
    ) -> None:
        """One atomic step after a call (``broker/finish_call.lua``): counters, busy count, the
        caller's reply, ``forget`` (the fast lane's processing entry), and for a call that ran
        (``ran``: its id) the state ``done:<node>``, so a janitor never gives a call that had
        its outcome another one. A Celery-lane call's result entry and acknowledgement
        (``celery``) ride in the same MULTI/EXEC with the script, all or nothing."""
        try:
            body = replies.encode_outcome(result, failure) if reply_to else b""
            listed, entry = forget or ("", b"")
            script_keys = [keys.pool_stats(self.pool.name), keys.busy(self.name),
                           keys.reply(reply_to or ""), keys.call_state(ran or ""),
                           listed or keys.fast_processing(self.name)]
            args: list[Any] = [
                requests, errors, busy_worker or "", "1" if reply_to else "0", body,
                replies.REPLY_TTL_SECONDS, entry, f"done:{self.name}" if ran else ""]
            if celery is None:
                lua.run(self.redis, "finish_call", script_keys, args)
                return
            # EVAL, not EVALSHA: a script Redis lost must not abort the transaction.
            batch = resp.Batch(resp.pack("EVAL", lua.compact("finish_call"), len(script_keys),
                                         *script_keys, *args))
            folded = celery.into(batch, result, failure)
            resp.raise_first_error(resp.transaction(self.redis, *batch.commands))
            if folded:
                celery.recorded()
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
            "host_id": host_id(),
            "capabilities": json.dumps(self._host_capabilities()),
            "device": self.pool.device,
            "metrics_port": self.metrics.port if self.metrics else 0,
        }
        return fields, self.workers.snapshot()

    def _host_capabilities(self) -> dict[str, Any]:
        """This host's capabilities; free GPU memory re-read every CAPABILITIES_REFRESH_S."""
        if self.capabilities.get("gpu_count") and (
                time.monotonic() - self._capabilities_at > CAPABILITIES_REFRESH_S):
            self._capabilities_at = time.monotonic()
            try:
                self.capabilities = hardware.capabilities(hardware.refresh())
            except Exception:
                log.debug("could not refresh hardware capabilities", exc_info=True)
        return self.capabilities

    def _check_requires(self, call: Call) -> None:
        """DeviceNotAvailable when this host lacks a capability the call asks for (routing
        sends such calls only to nodes that have it; a re-routed copy may still land here)."""
        lacking = hardware.missing(call.requires, self.capabilities)
        if lacking:
            raise hardware_error(self.name, call, lacking)

    def _metrics_workers(self) -> list[dict[str, Any]]:
        return [{**w, "tainted": self.workers.is_tainted(w["id"])}
                for w in self.workers.snapshot()]

    def _taint(self, worker: AdapterWorker, how: str = "crashed") -> None:
        """Crash barrier: routing avoids ``worker`` for crash_barrier_taint_duration_ms."""
        if not self.settings.crash_barrier_enabled:
            return
        ms = self.settings.crash_barrier_taint_duration_ms
        if not self.workers.is_tainted(worker.worker_id):  # once per crash, seen twice
            telemetry.emit(("snakepit", "worker", "tainted"), {"duration_ms": ms}, {
                "pool": self.pool.name, "node": self.name, "worker_id": worker.worker_id,
                "reason": how})
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


CAPABILITIES_REFRESH_S = 30.0


def hardware_error(node: str, call: Call, lacking: list[str]) -> SnakepitError:
    """The error for a call that reached a node whose host lacks ``lacking``."""
    return DeviceNotAvailable(
        f"call {call.command!r} requires {', '.join(lacking)}, which the host of node "
        f"{node} lacks",
        {"requires": list(call.requires), "missing": lacking, "node": node},
    )


def _message_preview(args: Any, kwargs: Any) -> str:
    """A refused call's arguments as text, for its dead letter."""
    try:
        return json.dumps({"args": args, "kwargs": kwargs}, default=repr)[:4096]
    except (TypeError, ValueError, RecursionError):
        return repr(kwargs)[:4096]
