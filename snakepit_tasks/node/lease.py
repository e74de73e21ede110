"""A node's lease: its description and workers in Redis with a TTL, refreshed by a thread
every ``node_lease_interval_ms``, and soon after a change (:meth:`NodeLease.changed`)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import redis

from .. import keys
from ..pool_state import live_nodes

#: After a change, how long the lease waits before publishing it: a burst of calls is one
#: publish, and what status shows lags by at most this much (seconds).
CHANGE_DELAY_S = 0.2


class NodeLease:
    """Publishes a node and its workers to Redis with a TTL, from its own thread."""

    def __init__(
        self,
        r: redis.Redis,
        node: str,
        pool: str,
        ttl_ms: int,
        interval_ms: int,
        describe: Any,
    ) -> None:
        self.r = r
        self.node = node
        self.pool = pool
        self.ttl_ms = ttl_ms
        self.interval = interval_ms / 1000
        self.describe = describe  # () -> (node fields, list of worker snapshots)
        self._stop = threading.Event()
        self._changed = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self) -> None:
        """Write the lease once."""
        fields, workers = self.describe()
        lease_key, workers_key = keys.node_lease(self.node), keys.node_workers(self.node)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(lease_key, mapping={**fields, "heartbeat": time.time()})
            pipe.pexpire(lease_key, self.ttl_ms)
            pipe.delete(workers_key)
            if workers:
                pipe.hset(workers_key, mapping={w["id"]: json.dumps(w) for w in workers})
                pipe.pexpire(workers_key, self.ttl_ms)
            pipe.set(keys.pool_alive(self.pool), self.node, px=self.ttl_ms)
            pipe.sadd(keys.pools(), self.pool)
            pipe.sadd(keys.pool_nodes(self.pool), self.node)
            pipe.execute()

    @property
    def running(self) -> bool:
        """Whether the lease is being kept (between :meth:`start` and :meth:`stop`)."""
        return self._thread is not None and not self._stop.is_set()

    def start(self) -> None:
        """Publish now, then every interval until :meth:`stop`."""
        self.publish()
        self._thread = threading.Thread(target=self._run, name="snakepit-lease", daemon=True)
        self._thread.start()

    def changed(self) -> None:
        """What the node publishes changed (a call started or ended): publish it soon."""
        self._changed.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._changed.wait(self.interval):
                self._stop.wait(CHANGE_DELAY_S)  # changes within the delay go out together
            if self._stop.is_set():
                return
            self._changed.clear()
            try:
                self.publish()
            except redis.RedisError:
                pass  # Redis away: the lease lapses, callers stop routing here; retry next tick

    def stop(self) -> None:
        """Stop refreshing and withdraw the lease."""
        self._stop.set()
        self._changed.set()
        if self._thread:
            self._thread.join(2)
        try:
            with self.r.pipeline(transaction=True) as pipe:
                pipe.delete(keys.node_lease(self.node), keys.node_workers(self.node))
                pipe.srem(keys.pool_nodes(self.pool), self.node)
                pipe.execute()
            if not live_nodes(self.r, self.pool):
                self.r.delete(keys.pool_alive(self.pool))
        except redis.RedisError:
            pass
