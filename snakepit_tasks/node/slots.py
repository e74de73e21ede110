"""Which worker of a node serves the next call: slots on ready workers, taints, recycling."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from ..config import Settings
from ..errors import QueueTimeout
from .worker import AdapterWorker


class NodeDraining(Exception):  # noqa: N818 - control flow inside the node
    """The node is shutting down: a call that has not started goes back to its queue."""


def recycle_reason(settings: Settings, worker: AdapterWorker) -> str:
    """Why ``worker`` is due to be replaced by a fresh process ("" if it is not)."""
    s = settings
    if s.worker_max_requests and worker.requests >= s.worker_max_requests:
        return f"served {worker.requests} calls (worker_max_requests)"
    if s.worker_ttl and time.time() - worker.started_at >= s.worker_ttl:
        return f"older than {s.worker_ttl}s (worker_ttl)"
    if s.memory_threshold_mb and worker.rss_bytes >= s.memory_threshold_mb * 1024 * 1024:
        return f"uses {worker.rss_bytes // (1024 * 1024)} MB (memory_threshold_mb)"
    return ""


class Slots:
    """The call slots of a node's workers. ``cond`` guards every worker's state and is
    notified whenever a slot may have become free; ``recycle(worker)`` is called (under it)
    for an idle worker that is due to be replaced."""

    def __init__(
        self,
        settings: Settings,
        node_name: str,
        workers: Sequence[AdapterWorker],
        cond: threading.Condition,
        recycle: Callable[[AdapterWorker], None],
    ) -> None:
        self.settings = settings
        self.node_name = node_name
        self.workers = workers
        self.cond = cond
        self._recycle = recycle
        self._tainted_until: dict[str, float] = {}
        self._closed = False

    def close(self) -> None:
        """Hand out no more slots: callers waiting for one get NodeDraining."""
        with self.cond:
            self._closed = True
            self.cond.notify_all()

    def taint(self, worker_id: str, seconds: float) -> None:
        """Prefer other workers over ``worker_id`` for ``seconds`` (it just crashed)."""
        with self.cond:
            self._tainted_until[worker_id] = time.monotonic() + seconds

    def is_tainted(self, worker_id: str) -> bool:
        """Whether ``worker_id`` crashed recently (see :meth:`taint`)."""
        return self._tainted_until.get(worker_id, 0.0) > time.monotonic()

    def acquire(
        self, deadline: float, worker_id: str | None = None, exclude: str | None = None
    ) -> AdapterWorker:
        """Take a slot on a ready worker (``worker_id``'s if given, never ``exclude``'s)
        before ``deadline``; untainted, least-loaded workers first."""
        with self.cond:
            while True:
                if self._closed:
                    raise NodeDraining(self.node_name)
                candidates = [
                    w
                    for w in self.workers
                    if w.has_free_slot
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
                self.cond.wait(min(remaining, 1.0))

    def free(self) -> int:
        """Slots free right now on ready workers."""
        with self.cond:
            return sum(max(0, w.capacity - w.inflight) for w in self.workers
                       if w.state == "ready")

    def wait_for_free(self, timeout: float, reserved: Callable[[], int] = lambda: 0) -> bool:
        """Wait up to ``timeout`` seconds until more slots are free than ``reserved()``;
        False on timeout or once the node hands out no more slots."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self._closed:
                if self.free() > reserved():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(remaining)
            return False

    def release(self, worker: AdapterWorker) -> None:
        """Give back a slot taken with :meth:`acquire`; recycle the worker if it is due."""
        with self.cond:
            worker.inflight -= 1
            worker.requests += 1
            if worker.state == "ready":
                worker.recycle_reason = recycle_reason(self.settings, worker)
                if worker.recycle_reason:
                    worker.state = "recycling"  # takes no new calls
            if worker.state == "recycling" and worker.inflight == 0:
                worker.state = "starting"
                self._recycle(worker)
            self.cond.notify_all()

    def recycle_if_idle(self, worker: AdapterWorker) -> None:
        """Replace ``worker`` now if it is ready, idle and due (else :meth:`release` will)."""
        with self.cond:
            if worker.state == "ready" and worker.inflight == 0:
                reason = recycle_reason(self.settings, worker)
                if reason:
                    worker.recycle_reason = reason
                    worker.state = "starting"
                    self._recycle(worker)

    def mark_dead(self, worker: AdapterWorker, generation: int) -> None:
        """Stop handing out ``worker`` (its process is gone; the exit watcher restarts it)."""
        with self.cond:
            if worker.generation == generation and worker.state in ("ready", "recycling"):
                worker.state = "dead"
