"""The pool as data in Redis: live nodes and their workers, known pools, counters."""

from __future__ import annotations

import json
from typing import Any

import redis

from . import keys
from .connections import text
from .kombu_redis import queue_length, queue_length_into


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


def lengths_into(pipe: Any, queue: str, fast_queue: str) -> None:
    """Queue the LLENs whose sum is how many calls wait for one destination, on both lanes:
    Celery ``queue`` and its fast-lane list."""
    queue_length_into(pipe, queue)
    pipe.llen(fast_queue)


def waiting(r: Any, queue: str, fast_queue: str) -> int:
    """Calls waiting for one destination on both lanes (see :func:`lengths_into`)."""
    with r.pipeline(transaction=False) as pipe:
        lengths_into(pipe, queue, fast_queue)
        return int(sum(pipe.execute()))


def known_pools(r: redis.Redis) -> set[str]:
    """Pools any node has ever served on this Redis."""
    return {text(p) for p in r.smembers(keys.pools())}


def pool_is_alive(r: redis.Redis, pool: str) -> bool:
    """Whether some node of ``pool`` holds a lease right now."""
    return bool(r.exists(keys.pool_alive(pool)))


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


__all__ = ["count", "known_pools", "live_nodes", "pool_is_alive", "queue_length", "read_counters"]
