"""Where a call goes: validation before anything is sent, and the queue it travels in."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from kombu import Queue

from . import keys, serialization, sessions, state
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

CALL_PARAMS = (
    "command",
    "args",
    "pool",
    "timeout",
    "deadline",
    "session_id",
    "stream",
    "affinity",
    "reply",
    # Set by routing, not by callers:
    "worker",
    "fallback",
    "enqueued_at",
)
MAX_SESSION_ID = 256


@dataclass(frozen=True)
class Call:
    """A validated call: the task's keyword arguments and its queue."""

    kwargs: dict[str, Any]
    queue: Queue
    pool: str
    deadline: float


def normalize(args: Any, kwargs: Any) -> dict[str, Any]:
    """Fold positional task arguments into keywords; reject unknown ones."""
    args = tuple(args or ())
    kwargs = dict(kwargs or {})
    if len(args) > len(CALL_PARAMS):
        raise SerializationError(
            f"snakepit.execute takes at most {len(CALL_PARAMS)} positional arguments "
            f"({', '.join(CALL_PARAMS)}), got {len(args)}"
        )
    for name, value in zip(CALL_PARAMS, args, strict=False):
        if name in kwargs:
            raise SerializationError(f"snakepit.execute got {name!r} twice")
        kwargs[name] = value
    unknown = sorted(set(kwargs) - set(CALL_PARAMS))
    if unknown:
        raise SerializationError(
            f"snakepit.execute got unknown argument(s) {', '.join(unknown)}; "
            f"it takes {', '.join(CALL_PARAMS)}"
        )
    return kwargs


def prepare(settings: Settings, args: Any, kwargs: Any) -> Call:
    """Validate a call and decide its queue; raise before anything is sent."""
    call = normalize(args, kwargs)
    command = call.get("command")
    if not isinstance(command, str) or not command:
        raise SerializationError(
            f"the tool name must be a non-empty string, got {command!r}",
            {"command": repr(command)},
        )
    serialization.check_args(call.get("args"))
    timeout = call.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise SerializationError(f"timeout must be a positive number of seconds, got {timeout!r}")
    session_id = call.get("session_id") or None
    if session_id is not None and (
        not isinstance(session_id, str) or len(session_id) > MAX_SESSION_ID
    ):
        raise SerializationError(
            f"session_id must be a string of at most {MAX_SESSION_ID} characters, "
            f"got {session_id!r}"
        )
    pool = call.get("pool") or settings.default_pool_name
    call["pool"] = pool
    if call.get("deadline") is None:
        streaming = bool(call.get("stream"))
        default_ms = (
            settings.pool_streaming_timeout if streaming else settings.default_command_timeout
        )
        seconds = timeout if timeout is not None else default_ms / 1000
        call["deadline"] = time.time() + float(seconds)
    call.setdefault("enqueued_at", time.time())
    if call.get("enqueued_at") is None:
        call["enqueued_at"] = time.time()

    r = state.redis_client(settings.redis_url)
    queue_name = keys.pool_queue(pool)
    with r.pipeline(transaction=False) as pipe:  # one round trip for the common case
        pipe.exists(keys.pool_alive(pool))
        state.queue_length_into(pipe, queue_name)
        if session_id:
            pipe.hmget(keys.session(session_id), "worker", "node")
        replies = pipe.execute()
    if not replies[0]:
        raise missing_pool_error(settings, r, pool)
    waiting = sum(replies[1 : 1 + state.QUEUE_PARTS])
    if session_id:
        call["affinity"] = affinity_for(settings, pool, call.get("affinity"))
        bound = replies[1 + state.QUEUE_PARTS]
        bound_worker, bound_node = (state.text(v) if v else None for v in bound)
        if bound_worker and bound_node:
            queue_name = _session_queue(r, call, session_id, bound_worker, bound_node)
            if queue_name != keys.pool_queue(pool):
                waiting = state.queue_length(r, queue_name)
    if waiting >= settings.pool_max_queue_size:
        state.count(r, pool, pool_saturated=1)
        raise QueueFull(
            f"{waiting} calls already wait in {queue_name} (pool_max_queue_size is "
            f"{settings.pool_max_queue_size}); retry later or add workers",
            {"pool": pool, "queued": waiting},
        )
    from .app import declare_queue

    return Call(
        kwargs=call,
        queue=declare_queue(queue_name),
        pool=pool,
        deadline=float(call["deadline"]),
    )


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


def _session_queue(
    r: Any, call: dict[str, Any], session_id: str, worker: str, node: str
) -> str:
    """Route a call of a bound session according to its affinity mode."""
    mode = call["affinity"]
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
        sessions.unbind(r, session_id)  # the next worker to run it binds it
        return keys.pool_queue(call["pool"])
    if busy and mode == "strict_fail_fast":
        raise WorkerBusy(
            f"session {session_id!r}: worker {worker} is busy (affinity strict_fail_fast)",
            details,
        )
    if busy and mode == "hint":
        call["fallback"] = True  # run anywhere, keep the binding
        return keys.pool_queue(call["pool"])
    call["worker"] = worker
    return keys.node_queue(node)


def missing_pool_error(settings: Settings, r: Any, pool: str) -> SnakepitError:
    """PoolNotFound for an unknown pool, NoWorkersAvailable when no node serves it."""
    configured = {p.name for p in settings.pools}
    known = configured | state.known_pools(r)
    if pool not in known:
        return PoolNotFound(
            f"unknown pool {pool!r}; known pools: {', '.join(sorted(known)) or 'none'}",
            {"pool": pool, "known": sorted(known)},
        )
    return NoWorkersAvailable(
        f"no live node serves pool {pool!r}; start one with "
        f"`snakepit-tasks worker --pool {pool}`",
        {"pool": pool},
    )


def check_pool(settings: Settings, pool: str) -> None:
    """Raise PoolNotFound / NoWorkersAvailable unless a node serves ``pool`` right now."""
    r = state.redis_client(settings.redis_url)
    if not state.pool_is_alive(r, pool):
        raise missing_pool_error(settings, r, pool)


def forget_liveness() -> None:
    """Kept for callers of earlier versions: liveness is no longer cached."""
