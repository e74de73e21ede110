"""Shared state in Redis: connections, node leases, workers and counters, as data."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis

from . import keys
from .errors import RedisUnavailable

_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def redis_client(url: str) -> redis.Redis:
    """One shared (thread-safe, pooled) client per URL in this process."""
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            client = redis.Redis.from_url(
                url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30
            )
            _clients[url] = client
        return client


def text(value: bytes | str) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else value


@contextlib.contextmanager
def redis_errors_as_snakepit(doing: str) -> Iterator[None]:
    """Turn a lost Redis or broker connection into :class:`RedisUnavailable`."""
    from kombu.exceptions import OperationalError

    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, OperationalError) as exc:
        raise RedisUnavailable(
            f"Redis could not be reached while {doing}: {exc}; check that it is running "
            "(the call may or may not have been sent)",
            {"error": str(exc)},
        ) from None


def close_clients() -> None:
    """Close every client :func:`redis_client` made."""
    with _clients_lock:
        for client in _clients.values():
            client.close()
        _clients.clear()


def live_nodes(r: redis.Redis, pool: str) -> list[dict[str, Any]]:
    """Leases of the nodes currently serving ``pool`` (expired ones are dropped)."""
    names = sorted(text(n) for n in r.smembers(keys.pool_nodes(pool)))
    if not names:
        return []
    with r.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(keys.node_lease(name))
            pipe.hgetall(keys.node_workers(name))
        replies = pipe.execute()
    nodes = []
    for i, name in enumerate(names):
        lease, workers = replies[2 * i], replies[2 * i + 1]
        if not lease:
            continue
        info: dict[str, Any] = {text(k): text(v) for k, v in lease.items()}
        info["name"] = name
        info["workers"] = sorted(
            (json.loads(v) for v in workers.values()), key=lambda w: w["id"]
        )
        nodes.append(info)
    return nodes


def known_pools(r: redis.Redis) -> set[str]:
    """Pools any node has ever served on this Redis."""
    return {text(p) for p in r.smembers(keys.pools())}


def count(r: redis.Redis, pool: str, **counters: int) -> None:
    """Add to ``pool``'s counters (requests, errors, queue_timeouts, pool_saturated)."""
    with r.pipeline(transaction=False) as pipe:
        for name, n in counters.items():
            if n:
                pipe.hincrby(keys.pool_stats(pool), name, n)
        pipe.execute()


def read_counters(r: redis.Redis, pool: str) -> dict[str, int]:
    """``pool``'s counters."""
    raw = r.hgetall(keys.pool_stats(pool))
    return {text(k): int(v) for k, v in raw.items()}


# kombu's Redis transport keeps priorities 3, 6 and 9 in sub-lists beside the queue's list.
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
QUEUE_PARTS = len(PRIORITY_SUFFIXES)


def queue_length_into(pipe: Any, queue: str) -> None:
    """Queue the LLENs whose sum is ``queue``'s length on a pipeline (QUEUE_PARTS replies)."""
    for suffix in PRIORITY_SUFFIXES:
        pipe.llen(queue + suffix)


def queue_length(r: redis.Redis, queue: str) -> int:
    """Messages waiting in a Redis-broker queue (all priority sub-queues included)."""
    with r.pipeline(transaction=False) as pipe:
        queue_length_into(pipe, queue)
        return int(sum(pipe.execute()))


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

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.publish()
            except redis.RedisError:
                pass  # Redis away: the lease lapses, callers stop routing here; retry next tick

    def stop(self) -> None:
        """Stop refreshing and withdraw the lease."""
        self._stop.set()
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


def pool_is_alive(r: redis.Redis, pool: str) -> bool:
    """Whether some node of ``pool`` holds a lease right now."""
    return bool(r.exists(keys.pool_alive(pool)))
