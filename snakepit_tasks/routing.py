"""Where a call goes: validation before anything is sent, and the queue it travels in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kombu import Queue

from . import connections, keys, kombu_redis, pool_state, serialization, session_store
from .call import Call
from .config import AFFINITY_MODES, Settings
from .errors import (
    ConfigurationError,
    NoWorkersAvailable,
    PoolNotFound,
    QueueFull,
    SerializationError,
    SessionWorkerUnavailable,
    SnakepitError,
    WorkerBusy,
)
from .host_tools.context import check_reentry
from .queues import declare_queue


@dataclass(frozen=True)
class Route:
    """A validated call and the queue it travels in: its pool's, or one node's (``node``)."""

    call: Call
    queue: Queue
    node: str | None = None

    @property
    def fast_queue(self) -> str:
        """The fast-lane list for the same destination."""
        if self.node:
            return keys.fast_node_queue(self.node)
        return keys.fast_pool_queue(self.pool)

    @property
    def kwargs(self) -> dict[str, Any]:
        """The call as the task's keyword arguments."""
        return self.call.to_kwargs()

    @property
    def pool(self) -> str:
        return self.call.pool or ""

    @property
    def deadline(self) -> float:
        return float(self.call.deadline or 0.0)


def parse(settings: Settings, args: Any, kwargs: Any) -> Call:
    """Validate a call with the caller's defaults (pool, deadline, queue clock)."""
    call = Call.parse(
        args,
        kwargs,
        default_pool=settings.default_pool_name,
        default_timeout_ms=settings.default_command_timeout,
        streaming_timeout_ms=settings.pool_streaming_timeout,
    )
    size = len(serialization.encode_args(call.args))
    if size > settings.max_call_bytes:
        raise SerializationError(
            f"the call's arguments are {size} bytes, over max_call_bytes "
            f"({settings.max_call_bytes}); pass large data by reference or through the "
            "zero-copy path, or raise the limit",
            {"size": size, "limit": settings.max_call_bytes},
        )
    return call


def prepare(settings: Settings, args: Any, kwargs: Any) -> Route:
    """Validate a call and decide its queue; raise before anything is sent."""
    call = parse(settings, args, kwargs)
    pool = call.pool or settings.default_pool_name
    session_id = call.session_id
    r = connections.redis_client(settings.redis_url)
    queue_name = keys.pool_queue(pool)
    parts = kombu_redis.QUEUE_PARTS + 1  # Celery's lists, then the fast lane's
    with r.pipeline(transaction=False) as pipe:  # one round trip for the common case
        pipe.exists(keys.pool_alive(pool))
        kombu_redis.queue_length_into(pipe, queue_name)
        pipe.llen(keys.fast_pool_queue(pool))
        if session_id:
            pipe.hmget(keys.session(session_id), "worker", "node")
        replies = pipe.execute()
    if not replies[0]:
        raise missing_pool_error(settings, r, pool)
    waiting = sum(replies[1 : 1 + parts])
    node = None
    if session_id:
        call = call.replace(affinity=affinity_for(settings, pool, call.affinity))
        bound = replies[1 + parts]
        bound_worker, bound_node = (connections.text(v) if v else None for v in bound)
        if bound_worker and bound_node:
            call, queue_name = _session_route(r, call, session_id, bound_worker, bound_node)
            if queue_name != keys.pool_queue(pool):
                node = bound_node
                waiting = kombu_redis.queue_length(r, queue_name) + int(
                    r.llen(keys.fast_node_queue(bound_node)))
    if waiting >= settings.pool_max_queue_size:
        pool_state.count(r, pool, pool_saturated=1)
        raise QueueFull(
            f"{waiting} calls already wait in {queue_name} (pool_max_queue_size is "
            f"{settings.pool_max_queue_size}); retry later or add workers",
            {"pool": pool, "queued": waiting},
        )
    return Route(call=call, queue=declare_queue(queue_name), node=node)


def affinity_for(settings: Settings, pool: str, requested: str | None) -> str:
    """The affinity mode of a call: per call, else the pool's, else the global setting."""
    if requested is not None:
        if requested not in AFFINITY_MODES:
            raise ConfigurationError(
                f"affinity must be one of {', '.join(AFFINITY_MODES)}, got {requested!r}"
            )
        return requested
    for p in settings.pools:
        if p.name == pool and p.affinity:
            return p.affinity
    return settings.affinity


def _session_route(
    r: Any, call: Call, session_id: str, worker: str, node: str
) -> tuple[Call, str]:
    """Route a call of a bound session according to its affinity mode."""
    mode = call.affinity
    pool = call.pool or ""
    with r.pipeline(transaction=False) as pipe:
        pipe.exists(keys.node_lease(node))
        pipe.hget(keys.node_workers(node), worker)
        pipe.hget(keys.busy(node), worker)
        pipe.exists(keys.taint(worker))
        alive, snapshot, busy_count, tainted = pipe.execute()
    gone = not alive or not snapshot
    info = json.loads(snapshot) if snapshot else {}
    busy = int(busy_count or 0) >= int(info.get("capacity", 1))
    details = {"session_id": session_id, "worker_id": worker, "node": node}
    if gone or tainted:
        why = "tainted after a crash" if tainted and not gone else "gone"
        if mode != "hint":
            raise SessionWorkerUnavailable(
                f"session {session_id!r} is bound to worker {worker}, which is {why} "
                f"(affinity {mode}); start a new session or use affinity='hint'",
                details,
            )
        session_store.unbind(r, session_id)  # the next worker to run it binds it
        return call, keys.pool_queue(pool)
    check_reentry(session_id, worker, mode or "hint", busy)  # from a host tool it waits for
    if busy and mode == "strict_fail_fast":
        raise WorkerBusy(
            f"session {session_id!r}: worker {worker} is busy (affinity strict_fail_fast)",
            details,
        )
    if busy and mode == "hint":
        return call.replace(fallback=True), keys.pool_queue(pool)  # run anywhere, keep binding
    return call.replace(worker=worker), keys.node_queue(node)


def missing_pool_error(settings: Settings, r: Any, pool: str) -> SnakepitError:
    """PoolNotFound for an unknown pool, NoWorkersAvailable when no node serves it."""
    configured = {p.name for p in settings.pools}
    known = configured | pool_state.known_pools(r)
    url = connections.shown(settings.redis_url)
    if pool not in known:
        return PoolNotFound(
            f"unknown pool {pool!r}: it is not configured here and no node has served it on "
            f"Redis {url}; known pools: {', '.join(sorted(known)) or 'none'}",
            {"pool": pool, "known": sorted(known), "redis_url": url},
        )
    return NoWorkersAvailable(
        f"no live node serves pool {pool!r} on Redis {url}; start one with "
        f"`snakepit-tasks worker --pool {pool}` using the same Redis (SNAKEPIT_REDIS_URL, or "
        "SNAKEPIT_CONFIG naming the same configuration file, in both environments)",
        {"pool": pool, "redis_url": url},
    )


def check_pool(settings: Settings, pool: str) -> None:
    """Raise PoolNotFound / NoWorkersAvailable unless a node serves ``pool`` right now."""
    r = connections.redis_client(settings.redis_url)
    if not pool_state.pool_is_alive(r, pool):
        raise missing_pool_error(settings, r, pool)
