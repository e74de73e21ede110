"""Restart intensity: how often a worker may be restarted before its restarts are paused."""

from __future__ import annotations

import time
from collections.abc import Callable


class RestartLimit:
    """A worker restarted more than ``max_restarts`` times within ``max_seconds`` waits
    ``max_seconds`` before its next restart (``worker_starter_max_restarts`` /
    ``worker_starter_max_seconds``). It is never given up on."""

    def __init__(
        self,
        max_restarts: int,
        max_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self._clock = clock
        self._recent: dict[str, list[float]] = {}

    def pause_before(self, worker_id: str) -> float:
        """Seconds to wait before restarting ``worker_id`` now: 0 to go ahead (the restart
        is counted), else ``max_seconds`` (the count starts over after the pause)."""
        now = self._clock()
        recent = [t for t in self._recent.get(worker_id, ()) if now - t < self.max_seconds]
        if len(recent) > self.max_restarts:
            self._recent[worker_id] = []
            return self.max_seconds
        recent.append(now)
        self._recent[worker_id] = recent
        return 0.0
