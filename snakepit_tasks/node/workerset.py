"""The workers one node hosts: start in batches, restart the dead, recycle the due.

Which worker serves a call is :mod:`.slots`; handing the call over is :mod:`.rpc`; finding
hung workers is :mod:`.heartbeat`. :class:`WorkerSet` ties them to the workers' life cycle.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

from .. import telemetry
from ..config import PoolConfig, Settings
from ..hardware import worker_device
from ..telemetry.logs import level_for
from . import run_dirs
from .heartbeat import Heartbeats
from .prestart import pool_env
from .registry import ProcessRegistry
from .restarts import RestartLimit
from .rpc import WorkerCalls, WorkerGone
from .slots import NodeDraining, Slots
from .worker import AdapterWorker, WorkerStartError, process_ended
from .zygote import Zygote

__all__ = ["NodeDraining", "WorkerGone", "WorkerSet"]

log = logging.getLogger("snakepit_tasks.node")


def runtime_args(settings: Settings) -> list[str]:
    """What a runtime is told about logging and tracing (it reads no settings itself)."""
    args = ["--log-level", str(level_for(settings.log_level, settings.log_categories,
                                         "adapter"))]
    if settings.otel_enabled:
        args += ["--otel-setup", settings.otel_setup]
    return args


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
        relay: Callable[[Any], Any] | None = None,
        zygote: Zygote | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.node_name = node_name
        self.run_id = run_id
        count = count if count is not None else pool.pool_size
        # Each worker's device (DeviceNotAvailable for a device this host lacks).
        devices = [worker_device(pool.device, i)[1] for i in range(count)]
        self.registry = ProcessRegistry(
            settings.data_dir or None, settings.instance_name, settings.instance_token
        )
        # Made by start() (after the sweep of dead runs' directories), removed by stop().
        self._run_path = run_dirs.run_dir(
            self.registry.data_dir, settings.instance_name, run_id or f"pid{os.getpid()}"
        )
        self.run_dir = str(self._run_path)
        n_workers = count if count is not None else pool.pool_size
        run_dirs.check_socket_room(self._run_path, f"w{max(0, n_workers - 1)}.sock")
        env = pool_env(settings, pool)
        # Forks the workers (their devices differ only in variables read after the fork); a
        # node starts it early (see bootstep), else it starts with the workers. Ours to stop.
        if zygote is None and settings.worker_start_method == "fork":
            zygote = Zygote(env, name=node_name, run_id=run_id, instance=instance)
        self._zygote = zygote
        self.workers = [
            AdapterWorker(
                worker_id=f"{node_name}/{i}",
                index=i,
                adapter=pool.adapter,
                capacity=pool.capacity,
                run_dir=self.run_dir,
                run_id=run_id,
                instance=instance,
                env={**env, **devices[i]},
                pool=pool.name,
                node=node_name,
                runtime_args=runtime_args(settings),
                zygote=self._zygote,
            )
            for i in range(n_workers)
        ]
        self._cond = threading.Condition()
        self._restarts: queue.Queue[tuple[AdapterWorker, str] | None] = queue.Queue()
        self._stopping = False
        self._on_exit = on_exit
        self._slots = Slots(
            settings, node_name, self.workers, self._cond,
            recycle=lambda w: self._restarts.put((w, "recycle")),
        )
        #: Runs calls on a worker whose slot was taken with :meth:`acquire` (see .rpc).
        self.calls = WorkerCalls(
            settings.stream_max_chunk_bytes, self._slots.mark_dead, lambda: self._stopping,
            max_result_bytes=settings.max_result_bytes, relay=relay,
        )
        self._heartbeats = Heartbeats(settings, self.workers, self._after_beat)
        self._limit = RestartLimit(
            settings.worker_starter_max_restarts, settings.worker_starter_max_seconds
        )
        self._supervisor: threading.Thread | None = None
        #: Called after a slot is taken or given back (the node republishes its lease).
        self.on_change: Callable[[], None] = lambda: None

    # -- life cycle ----------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        """Calls this node can serve at once."""
        return sum(w.capacity for w in self.workers)

    def open_run_dir(self) -> None:
        """Sweep the run directories of dead earlier runs and make this run's (sockets are
        bound there: the runtimes', and the node's HostTools)."""
        run_dirs.sweep(self._run_path.parent, keep=self._run_path)
        run_dirs.create(self._run_path)

    def start(self) -> None:
        """Start every worker, batch by batch; raise WorkerStartError if any cannot start."""
        batch = self.pool.startup_batch_size or self.settings.pool_startup_batch_size
        delay_ms = self.pool.startup_batch_delay_ms
        delay = (self.settings.pool_startup_batch_delay_ms if delay_ms is None else delay_ms) / 1000
        timeout = self.settings.pool_startup_timeout / 1000
        labels = {"pool": self.pool.name, "node": self.node_name, "adapter": self.pool.adapter,
                  "profile": self.pool.worker_profile}
        began = time.monotonic()
        telemetry.emit(("snakepit", "pool", "init_started"), {"workers": len(self.workers)},
                       labels)
        if self._zygote is not None:
            self._zygote.start()  # imports the runtime while the sweep runs
        swept = self.registry.sweep(self.run_id)
        if swept:
            log.warning("killed %d leftover adapter process(es) of earlier runs: %s",
                        len(swept), swept)
        self.registry.begin_run(self.run_id, self.node_name)
        try:
            self.open_run_dir()
            for first in range(0, len(self.workers), max(1, batch)):
                if first:
                    time.sleep(delay)
                group = self.workers[first : first + batch]
                self._start_batch(group, timeout)
        except BaseException:
            self.stop(grace=1.0)
            raise
        done_ms = (time.monotonic() - began) * 1000
        telemetry.emit(("snakepit", "pool", "init_complete"),
                       {"workers": len(self.workers), "duration_ms": done_ms}, labels)
        self._supervisor = threading.Thread(
            target=self._supervise, name="snakepit-supervisor", daemon=True
        )
        self._supervisor.start()
        if self.settings.heartbeat_enabled:
            self._heartbeats.start()

    def _start_batch(self, group: list[AdapterWorker], timeout: float) -> None:
        """Spawn ``group`` (from this thread: see _supervise), then record and wait for each
        worker from a thread of its own, as soon as it is spawned: its registry entry and
        handshake (channel, Describe) overlap the other workers' start (the run is noted in
        the registry already: a sweep finds a worker killed before its entry). Raises the
        first worker's WorkerStartError."""
        def record_and_wait(w: AdapterWorker) -> None:
            self._record(w)
            w.wait_ready(timeout)

        waiting = futures.ThreadPoolExecutor(len(group), thread_name_prefix="snakepit-start")
        try:
            waits = []
            for w in group:
                w.spawn()
                waits.append(waiting.submit(record_and_wait, w))
            errors: list[WorkerStartError] = []
            for done in waits:
                exc = done.exception()
                if isinstance(exc, WorkerStartError):
                    errors.append(exc)
                elif exc is not None:
                    raise exc
        finally:
            waiting.shutdown(wait=False)  # on a failure, stop() ends the waits
        if errors:
            raise errors[0]
        for w in group:
            self._watch(w)

    def stop(self, grace: float | None = None) -> None:
        """Stop every worker: SIGTERM, ``grace`` seconds, SIGKILL. Idempotent."""
        grace = self.settings.graceful_shutdown_timeout_ms / 1000 if grace is None else grace
        with self._cond:
            self._stopping = True
        self._slots.close()
        self._heartbeats.stop()
        self._restarts.put(None)
        threads = [
            threading.Thread(target=w.stop, args=(grace,), daemon=True) for w in self.workers
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(grace + 5)
        if self._zygote is not None:
            self._zygote.stop()
        self.registry.end_run(self.run_id)
        run_dirs.remove(self._run_path)

    def drain(self) -> None:
        """Take no new calls: calls waiting for a slot leave (their messages are requeued)."""
        self._slots.close()

    def kill_all(self) -> None:
        """SIGKILL every worker now (shutdown deadline passed); calls in flight fail."""
        for w in self.workers:
            w.kill()

    def snapshot(self) -> list[dict[str, Any]]:
        """Published state of every worker."""
        with self._cond:
            return [w.snapshot() for w in self.workers]

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
            # See the exit without reaping, so the worker stops being handed out at once.
            process_ended(process, block=True)
            self._slots.mark_dead(worker, generation)
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
        telemetry.emit(("snakepit", "worker", "crash"), {"exit_code": code},
                       {"pool": self.pool.name, "node": self.node_name,
                        "worker_id": worker.worker_id, "pid": worker.pid, "reason": how,
                        "signal": status.signal if status else None})
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
            old_pid, began = worker.pid, time.monotonic()
            if reason == "recycle":
                log.info("recycling worker %s (pid %s): %s", worker.worker_id, worker.pid,
                         worker.recycle_reason)
                telemetry.emit(
                    ("snakepit", "worker", "recycled"),
                    {"requests": worker.requests, "rss_bytes": worker.rss_bytes,
                     "uptime_ms": (time.time() - worker.started_at) * 1000},
                    {"pool": self.pool.name, "node": self.node_name,
                     "worker_id": worker.worker_id, "pid": worker.pid,
                     "reason": worker.recycle_reason},
                )
                worker.stop(self.settings.graceful_shutdown_timeout_ms / 1000, "recycle")
            else:
                pause = self._limit.pause_before(worker.worker_id)
                if pause:
                    log.warning(
                        "worker %s was restarted more than %d times within %ss "
                        "(worker_starter_max_restarts, worker_starter_max_seconds); "
                        "waiting %ss before restarting it again", worker.worker_id,
                        self._limit.max_restarts, self._limit.max_seconds, pause,
                    )
                    self._restart_later(worker, pause)
                    continue
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
                self._restart_later(worker, min(5.0, 0.5 * (n + 1)))
                continue
            failures.pop(worker.worker_id, None)
            log.info("worker %s restarted as pid %s", worker.worker_id, worker.pid)
            telemetry.emit(("snakepit", "worker", "restarted"),
                           {"duration_ms": (time.monotonic() - began) * 1000},
                           {"pool": self.pool.name, "node": self.node_name,
                            "worker_id": worker.worker_id, "pid": worker.pid,
                            "old_pid": old_pid, "reason": reason})
            self._watch(worker)
            with self._cond:
                self._cond.notify_all()

    def _restart_later(self, worker: AdapterWorker, seconds: float) -> None:
        """Queue a restart of ``worker`` in ``seconds``, without holding up other restarts."""
        def queue_it() -> None:
            if not self._stopping:
                self._restarts.put((worker, "crash"))

        timer = threading.Timer(seconds, queue_it)
        timer.daemon = True
        timer.start()

    def _after_beat(self, worker: AdapterWorker) -> None:
        limit = self.settings.memory_threshold_mb * 1024 * 1024
        if limit and worker.rss_bytes >= limit:
            self._slots.recycle_if_idle(worker)

    # -- slots (see .slots) --------------------------------------------------------------
    def taint(self, worker_id: str, seconds: float) -> None:
        """Prefer other workers over ``worker_id`` for ``seconds`` (it just crashed)."""
        self._slots.taint(worker_id, seconds)

    def is_tainted(self, worker_id: str) -> bool:
        """Whether ``worker_id`` crashed recently (see :meth:`taint`)."""
        return self._slots.is_tainted(worker_id)

    def acquire(
        self, deadline: float, worker_id: str | None = None, exclude: str | None = None
    ) -> AdapterWorker:
        """Take a slot on a ready worker (``worker_id``'s if given, never ``exclude``'s)
        before ``deadline``; untainted, least-loaded workers first."""
        worker = self._slots.acquire(deadline, worker_id, exclude)
        self.on_change()
        return worker

    def release(self, worker: AdapterWorker) -> None:
        """Give back a slot taken with :meth:`acquire`; recycle the worker if it is due."""
        self._slots.release(worker)
        self.on_change()

    def wait_for_free_slot(self, timeout: float, reserved: Callable[[], int] = lambda: 0) -> bool:
        """Wait until more slots are free than ``reserved()`` (see Slots.wait_for_free)."""
        return self._slots.wait_for_free(timeout, reserved)
