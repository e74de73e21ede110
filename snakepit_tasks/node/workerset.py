"""The workers one node hosts: start in batches, hand calls to free slots, restart the dead."""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from .. import serialization
from .._proto import bridge_pb2 as pb
from ..config import PoolConfig, Settings
from ..errors import (
    AdapterError,
    ExecutionTimeout,
    QueueTimeout,
    SerializationError,
    SnakepitError,
    ToolNotFound,
    WorkerCrashed,
)
from .registry import ProcessRegistry
from .worker import AdapterWorker, WorkerStartError, worker_env

log = logging.getLogger("snakepit_tasks.node")


class NodeDraining(Exception):  # noqa: N818 - control flow inside the node
    """The node is shutting down: a call that has not started goes back to its queue."""


class WorkerGone(Exception):  # noqa: N818 - control flow inside the node
    """The worker's process had ended before the call reached it: nothing ran, so the call
    can go to another worker whatever the tool."""

    def __init__(self, worker_id: str) -> None:
        super().__init__(worker_id)
        self.worker_id = worker_id


# gRPC details when the call never reached the runtime (its socket was gone).
_NOT_SENT_MARKERS = ("failed to connect", "connection refused", "no such file")


class WorkerSet:
    """The adapter workers of one node, and the slots callers take on them."""

    def __init__(
        self,
        settings: Settings,
        pool: PoolConfig,
        node_name: str,
        *,
        count: int | None = None,
        run_id: str = "",
        instance: str = "",
        on_exit: Callable[[AdapterWorker, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.node_name = node_name
        self.run_id = run_id
        self.registry = ProcessRegistry(
            settings.data_dir or None, settings.instance_name, settings.instance_token
        )
        self.run_dir = tempfile.mkdtemp(prefix="snakepit-")  # mode 0700
        env = worker_env(dict(os.environ), pool.worker_profile, pool.adapter_env)
        self.workers = [
            AdapterWorker(
                worker_id=f"{node_name}/{i}",
                index=i,
                adapter=pool.adapter,
                capacity=pool.capacity,
                run_dir=self.run_dir,
                run_id=run_id,
                instance=instance,
                env=env,
            )
            for i in range(count if count is not None else pool.pool_size)
        ]
        self._cond = threading.Condition()
        self._restarts: queue.Queue[tuple[AdapterWorker, str] | None] = queue.Queue()
        self._tainted_until: dict[str, float] = {}
        self._stopping = False
        self._draining = False
        self._on_exit = on_exit
        self._supervisor: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        """Calls this node can serve at once."""
        return sum(w.capacity for w in self.workers)

    def start(self) -> None:
        """Start every worker, batch by batch; raise WorkerStartError if any cannot start."""
        batch = self.pool.startup_batch_size or self.settings.pool_startup_batch_size
        delay_ms = self.pool.startup_batch_delay_ms
        delay = (self.settings.pool_startup_batch_delay_ms if delay_ms is None else delay_ms) / 1000
        timeout = self.settings.pool_startup_timeout / 1000
        swept = self.registry.sweep(self.run_id)
        if swept:
            log.warning("killed %d leftover adapter process(es) of earlier runs: %s",
                        len(swept), swept)
        self.registry.begin_run(self.run_id, self.node_name)
        try:
            for first in range(0, len(self.workers), max(1, batch)):
                if first:
                    time.sleep(delay)
                group = self.workers[first : first + batch]
                for w in group:
                    w.spawn()
                    self._record(w)
                errors: list[WorkerStartError] = []
                for w in group:
                    try:
                        w.wait_ready(timeout)
                    except WorkerStartError as exc:
                        errors.append(exc)
                if errors:
                    raise errors[0]
                for w in group:
                    self._watch(w)
        except BaseException:
            self.stop(grace=1.0)
            raise
        self._supervisor = threading.Thread(
            target=self._supervise, name="snakepit-supervisor", daemon=True
        )
        self._supervisor.start()
        if self.settings.heartbeat_enabled:
            threading.Thread(target=self._heartbeat, name="snakepit-heartbeat", daemon=True).start()

    def stop(self, grace: float | None = None) -> None:
        """Stop every worker: SIGTERM, ``grace`` seconds, SIGKILL. Idempotent."""
        grace = self.settings.graceful_shutdown_timeout_ms / 1000 if grace is None else grace
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._restarts.put(None)
        threads = [
            threading.Thread(target=w.stop, args=(grace,), daemon=True) for w in self.workers
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(grace + 5)
        self.registry.end_run(self.run_id)
        try:
            for name in os.listdir(self.run_dir):
                os.unlink(os.path.join(self.run_dir, name))
            os.rmdir(self.run_dir)
        except OSError:
            pass

    def drain(self) -> None:
        """Take no new calls: calls waiting for a slot leave (their messages are requeued)."""
        with self._cond:
            self._draining = True
            self._cond.notify_all()

    def kill_all(self) -> None:
        """SIGKILL every worker now (shutdown deadline passed); calls in flight fail."""
        for w in self.workers:
            w.kill()

    def _record(self, worker: AdapterWorker) -> None:
        if worker.pid is not None:
            self.registry.record(
                worker.pid, run_id=self.run_id, worker_id=worker.worker_id,
                node_name=self.node_name,
            )

    def _watch(self, worker: AdapterWorker) -> None:
        process = worker.process
        generation = worker.generation

        def wait_exit() -> None:
            assert process is not None
            try:  # see the exit without reaping, so the worker stops being handed out at once
                os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                pass
            self._mark_dead(worker, generation)
            code = process.wait()
            self.registry.forget(process.pid)
            self._exited(worker, generation, code)

        threading.Thread(target=wait_exit, name=f"wait-{worker.index}", daemon=True).start()

    def _exited(self, worker: AdapterWorker, generation: int, code: int) -> None:
        with self._cond:
            if worker.generation != generation or self._stopping or worker.state == "stopped":
                return
            worker.state = "dead"
            self._cond.notify_all()
        status = worker.exit_status()
        how = status.describe() if status else f"exited ({code})"
        if worker.kill_reason:
            how += f" ({worker.kill_reason})"
        log.warning("worker %s (pid %s) %s; restarting it", worker.worker_id, worker.pid, how)
        if self._on_exit:
            self._on_exit(worker, how)
        self._restarts.put((worker, "crash"))

    def _supervise(self) -> None:
        # Restarts happen on this one long-lived thread: the runtimes' parent-death signal
        # follows the thread that spawned them.
        failures: dict[str, int] = {}
        while True:
            item = self._restarts.get()
            if item is None or self._stopping:
                return
            worker, reason = item
            backoff = self.settings.crash_barrier_backoff_ms or (100,)
            n = failures.get(worker.worker_id, 0)
            if reason == "recycle":
                log.info("recycling worker %s (pid %s): %s", worker.worker_id, worker.pid,
                         worker.recycle_reason)
                worker.stop(self.settings.graceful_shutdown_timeout_ms / 1000)
            else:
                time.sleep(backoff[min(n, len(backoff) - 1)] / 1000)
            try:
                worker.kill()  # its children, if any survived it
                with self._cond:
                    if self._stopping:
                        return
                    worker.spawn()
                    self._record(worker)
                worker.wait_ready(self.settings.pool_startup_timeout / 1000)
            except (WorkerStartError, OSError, grpc.RpcError) as exc:
                failures[worker.worker_id] = n + 1
                log.error("restart of worker %s failed: %s", worker.worker_id, exc)
                time.sleep(min(5.0, 0.5 * (n + 1)))
                self._restarts.put((worker, "crash"))
                continue
            failures.pop(worker.worker_id, None)
            log.info("worker %s restarted as pid %s", worker.worker_id, worker.pid)
            self._watch(worker)
            with self._cond:
                self._cond.notify_all()

    # -- slots ---------------------------------------------------------------------------
    def taint(self, worker_id: str, seconds: float) -> None:
        """Prefer other workers over ``worker_id`` for ``seconds`` (it just crashed)."""
        with self._cond:
            self._tainted_until[worker_id] = time.monotonic() + seconds

    def is_tainted(self, worker_id: str) -> bool:
        """Whether ``worker_id`` crashed recently (see :meth:`taint`)."""
        return self._tainted_until.get(worker_id, 0.0) > time.monotonic()

    def acquire(
        self, deadline: float, worker_id: str | None = None, exclude: str | None = None
    ) -> AdapterWorker:
        """Take a slot on a ready worker (``worker_id``'s if given, never ``exclude``'s)
        before ``deadline``; untainted, least-loaded workers first."""
        with self._cond:
            while True:
                if self._stopping or self._draining:
                    raise NodeDraining(self.node_name)
                candidates = [
                    w
                    for w in self.workers
                    if w.state == "ready"
                    and w.inflight < w.capacity
                    and (worker_id is None or w.worker_id == worker_id)
                    and w.worker_id != exclude
                ]
                if candidates:
                    # Untainted first, then least loaded, then least used: idle workers take
                    # turns, so sessions started one after another spread over them.
                    best = min(
                        candidates,
                        key=lambda w: (self.is_tainted(w.worker_id), w.inflight, w.requests),
                    )
                    best.inflight += 1
                    return best
                remaining = deadline - time.time()
                if remaining <= 0:
                    raise QueueTimeout(
                        f"no worker of node {self.node_name} became free in time",
                        {"node": self.node_name},
                    )
                self._cond.wait(min(remaining, 1.0))

    def release(self, worker: AdapterWorker) -> None:
        """Give back a slot taken with :meth:`acquire`; recycle the worker if it is due."""
        with self._cond:
            worker.inflight -= 1
            worker.requests += 1
            if worker.state == "ready":
                worker.recycle_reason = self._recycle_reason(worker)
                if worker.recycle_reason:
                    worker.state = "recycling"  # takes no new calls
            if worker.state == "recycling" and worker.inflight == 0:
                worker.state = "starting"
                self._restarts.put((worker, "recycle"))
            self._cond.notify()

    def _recycle_reason(self, worker: AdapterWorker) -> str:
        s = self.settings
        if s.worker_max_requests and worker.requests >= s.worker_max_requests:
            return f"served {worker.requests} calls (worker_max_requests)"
        if s.worker_ttl and time.time() - worker.started_at >= s.worker_ttl:
            return f"older than {s.worker_ttl}s (worker_ttl)"
        if s.memory_threshold_mb and worker.rss_bytes >= s.memory_threshold_mb * 1024 * 1024:
            return f"uses {worker.rss_bytes // (1024 * 1024)} MB (memory_threshold_mb)"
        return ""

    def _heartbeat(self) -> None:
        """Ping every ready worker; kill one that misses ``heartbeat_max_missed`` in a row."""
        s = self.settings
        interval = s.heartbeat_ping_interval_ms / 1000
        timeout = min(s.heartbeat_timeout_ms / 1000, max(interval, 0.5))
        seq = 0
        while not self._stopping:
            time.sleep(interval)
            seq += 1
            for w in list(self.workers):
                stub, generation = w.stub, w.generation
                if w.state not in ("ready", "recycling") or stub is None:
                    continue
                try:
                    beat = stub.Heartbeat(pb.HeartbeatRequest(seq=seq), timeout=timeout)
                    w.missed_heartbeats = 0
                    w.rss_bytes = int(beat.rss_bytes)
                except grpc.RpcError:
                    if w.generation != generation or w.state not in ("ready", "recycling"):
                        continue
                    w.missed_heartbeats += 1
                    if w.missed_heartbeats >= s.heartbeat_max_missed:
                        w.kill_reason = f"missed {w.missed_heartbeats} heartbeats: hung"
                        log.warning("worker %s (pid %s) %s; killing it", w.worker_id, w.pid,
                                    w.kill_reason)
                        w.kill()
                if (
                    w.state == "ready" and s.memory_threshold_mb
                    and w.rss_bytes >= s.memory_threshold_mb * 1024 * 1024
                ):
                    with self._cond:
                        if w.state == "ready" and w.inflight == 0:
                            w.recycle_reason = self._recycle_reason(w)
                            w.state = "starting"
                            self._restarts.put((w, "recycle"))

    # -- the hand-off --------------------------------------------------------------------
    @staticmethod
    def _request(command: str, args: Any, call_id: str, session_id: str) -> pb.ExecuteRequest:
        return pb.ExecuteRequest(
            call_id=call_id,
            tool=command,
            args=pb.Payload(data=serialization.encode_args(args), encoding=serialization.JSON),
            session_id=session_id,
        )

    def execute_on(
        self,
        worker: AdapterWorker,
        command: str,
        args: Any,
        *,
        deadline: float,
        call_id: str = "",
        session_id: str = "",
    ) -> Any:
        """Run ``command`` on ``worker`` (a slot taken with :meth:`acquire`); its result."""
        return self._execute(worker, self._request(command, args, call_id, session_id), deadline)

    def _execute(self, worker: AdapterWorker, request: pb.ExecuteRequest, deadline: float) -> Any:
        remaining = deadline - time.time()
        if remaining <= 0:
            raise ExecutionTimeout(f"call {request.tool!r} reached its deadline before it ran")
        stub = worker.stub
        generation = worker.generation
        assert stub is not None
        self._check_alive(worker)
        try:
            response = stub.Execute(request, timeout=remaining)
        except grpc.RpcError as exc:
            raise self._rpc_failure(worker, generation, request.tool, exc) from None
        except ValueError:  # its channel was closed: the worker is being replaced
            self._mark_dead(worker, generation)
            raise WorkerGone(worker.worker_id) from None
        if response.ok:
            return serialization.decode(response.result.data, response.result.encoding)
        raise error_from_info(response.error, worker.worker_id)

    def _check_alive(self, worker: AdapterWorker) -> None:
        process = worker.process
        if process is None or _has_exited(process.pid):
            self._mark_dead(worker, worker.generation)
            raise WorkerGone(worker.worker_id)

    def _mark_dead(self, worker: AdapterWorker, generation: int) -> None:
        """Stop handing out ``worker`` (its process is gone; the exit watcher restarts it)."""
        with self._cond:
            if worker.generation == generation and worker.state in ("ready", "recycling"):
                worker.state = "dead"

    def _rpc_failure(
        self, worker: AdapterWorker, generation: int, tool: str, exc: grpc.RpcError
    ) -> Exception:
        code = exc.code() if hasattr(exc, "code") else None
        said = str(exc.details() if hasattr(exc, "details") else exc).lower()
        if code == grpc.StatusCode.UNAVAILABLE and any(m in said for m in _NOT_SENT_MARKERS):
            self._mark_dead(worker, generation)
            return WorkerGone(worker.worker_id)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            if worker.capacity == 1 and worker.generation == generation:
                # The tool is still running and owns the process: replace the worker so the
                # slot really becomes free (like a hard time limit).
                log.warning("call %r timed out on %s; replacing the worker", tool, worker.worker_id)
                self._mark_dead(worker, generation)
                worker.kill()
            return ExecutionTimeout(
                f"call {tool!r} did not finish before its deadline", {"worker_id": worker.worker_id}
            )
        status = worker.exit_status(wait=2.0) if worker.generation == generation else None
        details: dict[str, Any] = {"worker_id": worker.worker_id, "tool": tool, "pid": worker.pid}
        if status is not None:
            details.update(exit_code=status.returncode, signal=status.signal)
            why = f" ({worker.kill_reason})" if worker.kill_reason else ""
            details["reason"] = worker.kill_reason or status.describe()
            after = "the node is stopping" if self._stopping else "it is being restarted"
            return WorkerCrashed(
                f"worker {worker.worker_id} (pid {worker.pid}) {status.describe()}{why} while "
                f"running {tool!r}; {after}",
                details,
            )
        return WorkerCrashed(
            f"worker {worker.worker_id} became unreachable while running {tool!r} "
            f"({code.name if code else exc})",
            details,
        )

    def stream_on(
        self,
        worker: AdapterWorker,
        command: str,
        args: Any,
        *,
        deadline: float,
        on_chunk: Callable[[int, bytes], None],
        cancelled: threading.Event,
        call_id: str = "",
        session_id: str = "",
    ) -> Any:
        """Run a streaming tool on ``worker``; hand each chunk to ``on_chunk``; return the
        final result. Stops the tool (and frees the worker) once ``cancelled`` is set."""
        request = self._request(command, args, call_id, session_id)
        return self._stream(worker, request, deadline, on_chunk, cancelled)

    def _stream(
        self,
        worker: AdapterWorker,
        request: pb.ExecuteRequest,
        deadline: float,
        on_chunk: Callable[[int, bytes], None],
        cancelled: threading.Event,
    ) -> Any:
        remaining = deadline - time.time()
        if remaining <= 0:
            raise ExecutionTimeout(f"call {request.tool!r} reached its deadline before it ran")
        assert worker.stub is not None
        generation = worker.generation
        limit = self.settings.stream_max_chunk_bytes
        self._check_alive(worker)
        try:
            rpc = worker.stub.ExecuteStream(request, timeout=remaining)
        except ValueError:  # its channel was closed: the worker is being replaced
            self._mark_dead(worker, generation)
            raise WorkerGone(worker.worker_id) from None
        watcher = threading.Thread(
            target=_cancel_when, args=(cancelled, rpc), name="stream-cancel", daemon=True
        )
        watcher.start()
        count = 0
        try:
            for message in rpc:
                if message.is_final:
                    if message.HasField("error") and message.error.kind:
                        raise error_from_info(message.error, worker.worker_id)
                    return serialization.decode(message.result.data, message.result.encoding)
                size = len(message.data.data)
                if size > limit:
                    rpc.cancel()
                    raise SerializationError(
                        f"chunk {message.seq} of {request.tool!r} is {size} bytes, over the "
                        f"{limit}-byte limit (stream_max_chunk_bytes); send large data by "
                        "reference or raise the limit",
                        {"seq": message.seq, "size": size, "limit": limit},
                    )
                count += 1
                on_chunk(message.seq, message.data.data)
        except grpc.RpcError as exc:
            if cancelled.is_set():
                return {"halted": True, "chunks": count}
            raise self._rpc_failure(worker, generation, request.tool, exc) from None
        if cancelled.is_set():
            return {"halted": True, "chunks": count}
        raise WorkerCrashed(
            f"stream of {request.tool!r} on {worker.worker_id} ended without a final message",
            {"worker_id": worker.worker_id},
        )

    def snapshot(self) -> list[dict[str, Any]]:
        """Published state of every worker."""
        with self._cond:
            return [w.snapshot() for w in self.workers]


def _has_exited(pid: int) -> bool:
    """Whether child ``pid`` has ended, without taking Popen's wait lock (its exit watcher
    holds it while blocked in wait())."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True  # already reaped


def _cancel_when(cancelled: threading.Event, rpc: Any) -> None:
    """Cancel ``rpc`` once ``cancelled`` is set; return when the RPC ends either way."""
    while not cancelled.wait(0.05):
        if not rpc.is_active():
            return
    rpc.cancel()


def error_from_info(info: pb.ErrorInfo, worker_id: str) -> SnakepitError:
    """The caller-facing exception for an error the runtime reported."""
    details = {
        "type": info.type,
        "message": info.message,
        "traceback": info.traceback,
        "worker_id": worker_id,
    }
    if info.kind == "tool_not_found":
        return ToolNotFound(info.message, {"available": list(info.available_tools), **details})
    if info.kind == "serialization":
        return SerializationError(info.message, details)
    return AdapterError(f"{info.type}: {info.message}", details)
