"""A pool's health as data: worker crashes in a sliding window, kept in Redis.

Each crash is one entry of the sorted set ``keys.health(pool)`` scored by Redis server time, so
every node that records crashes and every process that asks agrees on the window. The pool is
unhealthy while ``max_crashes`` or more crashes fall within the last ``window_ms`` (the
original: 10 crashes in 60 s). Old entries are trimmed on every call; the key expires when no
crash was recorded for a whole window.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from redis import Redis

from .. import errors, keys, lua
from ..config import Settings, load_settings
from ..connections import redis_client, text

log = logging.getLogger("snakepit_tasks.resilience")


class HealthMonitor:
    """Crash counting for one pool, shared by every process through Redis.

    Unset limits come from ``settings`` (``health_monitor_crash_window_ms``,
    ``health_monitor_max_crashes``); given neither a connection nor settings, the
    configuration is loaded.
    """

    def __init__(
        self,
        pool: str,
        *,
        redis: Redis | None = None,
        redis_url: str | None = None,
        window_ms: int | None = None,
        max_crashes: int | None = None,
        settings: Settings | None = None,
    ) -> None:
        if settings is None:
            settings = Settings() if redis is not None or redis_url else load_settings()
        self.pool = pool
        self.redis: Redis = redis if redis is not None else redis_client(
            redis_url or settings.redis_url
        )
        self.window_ms = _positive(
            "window_ms", window_ms, settings.health_monitor_crash_window_ms
        )
        self.max_crashes = _positive(
            "max_crashes", max_crashes, settings.health_monitor_max_crashes
        )
        self._key = keys.health(pool)

    def __repr__(self) -> str:
        return f"HealthMonitor({self.pool!r})"

    def _run(self, op: str, member: str = "") -> list[Any]:
        script = lua.script(self.redis, "health_record")
        reply: list[Any] = script(keys=[self._key], args=[op, self.window_ms, member])
        return reply

    def record_crash(self, worker_id: str) -> int:
        """Count one crash of ``worker_id``; return the crashes now in the window."""
        count = int(self._run("record", f"{uuid.uuid4().hex}:{worker_id}")[0])
        if count == self.max_crashes:
            log.warning(
                "pool %s unhealthy: %d worker crashes within %d ms",
                self.pool, count, self.window_ms,
            )
        return count

    def crashes(self) -> int:
        """Crashes within the window now."""
        return int(self._run("count")[0])

    def healthy(self) -> bool:
        """False while ``max_crashes`` or more crashes fall within the window."""
        return self.crashes() < self.max_crashes

    def reset(self) -> None:
        """Forget every recorded crash."""
        self.redis.delete(self._key)

    def stats(self) -> dict[str, Any]:
        """Crashes in the window (total and per worker), limits, and health."""
        reply = self._run("stats")
        count, now = int(reply[0]), int(reply[1])
        entries = reply[2:]
        by_worker: dict[str, int] = {}
        last = None
        for i in range(0, len(entries), 2):
            worker = text(entries[i]).split(":", 1)[1]
            by_worker[worker] = by_worker.get(worker, 0) + 1
            last = int(float(text(entries[i + 1])))
        return {
            "pool": self.pool,
            "healthy": count < self.max_crashes,
            "crashes": count,
            "max_crashes": self.max_crashes,
            "window_ms": self.window_ms,
            "by_worker": by_worker,
            "last_crash_ago_ms": None if last is None else now - last,
        }


def _positive(arg: str, value: int | None, default: int) -> int:
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise errors.ConfigurationError(
            f"health monitor {arg} must be a positive integer, got {value!r}", {arg: value}
        )
    return value
