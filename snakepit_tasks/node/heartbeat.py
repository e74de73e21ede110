"""Heartbeats: the node pings each of its workers and kills one that stopped answering.

A ping may go unanswered for ``heartbeat_timeout_ms`` before it counts as missed; a worker
that misses ``heartbeat_max_missed`` in a row is hung and gets SIGKILL (its exit watcher then
restarts it). Pings are asynchronous and at most one per worker is outstanding, so a hung
worker never delays the pings of the others.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from .. import telemetry
from .._proto import bridge_pb2 as pb
from ..config import Settings
from .adapter_events import reemit
from .worker import AdapterWorker

log = logging.getLogger("snakepit_tasks.heartbeat")

_PINGED = ("ready", "recycling")

# An answered (or failed) ping: the worker, its generation when pinged, the gRPC future.
_Answer = tuple[AdapterWorker, int, Any]


class Heartbeats:
    """Pings ``workers`` every ``heartbeat_ping_interval_ms`` on one thread; calls
    ``on_beat(worker)`` after each answer (its ``rss_bytes`` just updated)."""

    def __init__(
        self,
        settings: Settings,
        workers: Sequence[AdapterWorker],
        on_beat: Callable[[AdapterWorker], None],
    ) -> None:
        self.interval = settings.heartbeat_ping_interval_ms / 1000
        self.timeout = settings.heartbeat_timeout_ms / 1000
        self.max_missed = settings.heartbeat_max_missed
        self.workers = workers
        self._on_beat = on_beat
        self._answers: queue.Queue[_Answer | None] = queue.Queue()
        self._pending: set[tuple[str, int]] = set()  # (worker id, generation) with a ping out
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start pinging (on a daemon thread)."""
        self._thread = threading.Thread(target=self._run, name="snakepit-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop pinging; answers still on their way are ignored."""
        self._answers.put(None)

    def _run(self) -> None:
        seq = 0
        next_ping = time.monotonic() + self.interval
        while True:
            now = time.monotonic()
            if now >= next_ping:
                seq += 1
                for worker in list(self.workers):
                    self._ping(worker, seq)
                next_ping = now + self.interval
            try:
                answer = self._answers.get(timeout=max(0.0, next_ping - time.monotonic()))
            except queue.Empty:
                continue
            if answer is None:
                return
            self._answered(*answer)

    def _ping(self, worker: AdapterWorker, seq: int) -> None:
        stub, generation = worker.stub, worker.generation
        key = (worker.worker_id, generation)
        if worker.state not in _PINGED or stub is None or key in self._pending:
            return
        try:
            future = stub.Heartbeat.future(pb.HeartbeatRequest(seq=seq), timeout=self.timeout)
        except ValueError:  # its channel was closed: the worker is being replaced
            return
        self._pending.add(key)
        # Runs on a gRPC thread: only hand the outcome over to the heartbeat thread.
        future.add_done_callback(lambda done: self._answers.put((worker, generation, done)))

    def _answered(self, worker: AdapterWorker, generation: int, future: Any) -> None:
        self._pending.discard((worker.worker_id, generation))
        if worker.generation != generation:
            return  # answered by a process that has been replaced since
        try:
            beat = future.result()
        except (grpc.RpcError, grpc.FutureCancelledError):
            if worker.state in _PINGED:
                self._missed(worker)
            return
        worker.missed_heartbeats = 0
        worker.rss_bytes = int(beat.rss_bytes)
        if beat.events or beat.events_dropped:
            reemit(worker, beat)
        self._on_beat(worker)

    def _missed(self, worker: AdapterWorker) -> None:
        worker.missed_heartbeats += 1
        labels = {"pool": worker.pool, "node": worker.node, "worker_id": worker.worker_id,
                  "pid": worker.pid}
        missed = {"missed": worker.missed_heartbeats}
        telemetry.emit(("snakepit", "heartbeat", "failure"), missed, labels)
        if worker.missed_heartbeats >= self.max_missed:
            worker.kill_reason = f"missed {worker.missed_heartbeats} heartbeats: hung"
            log.warning("worker %s (pid %s) %s; killing it", worker.worker_id, worker.pid,
                        worker.kill_reason)
            telemetry.emit(("snakepit", "heartbeat", "timeout"), missed, labels)
            worker.kill()
