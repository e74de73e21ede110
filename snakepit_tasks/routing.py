"""Where a call goes: validation before anything is sent, and the queue it travels in."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from kombu import Queue

from . import keys, serialization, state
from .config import Settings
from .errors import NoWorkersAvailable, PoolNotFound, SerializationError

CALL_PARAMS = ("command", "args", "pool", "timeout", "deadline", "session_id", "stream")
ALIVE_CACHE_SECONDS = 1.0


@dataclass(frozen=True)
class Call:
    """A validated call: the task's keyword arguments and its queue."""

    kwargs: dict[str, Any]
    queue: Queue
    pool: str
    deadline: float


_alive_seen: dict[tuple[str, str], float] = {}
_alive_lock = threading.Lock()


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
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise SerializationError(f"timeout must be a positive number of seconds, got {timeout!r}")
    pool = call.get("pool") or settings.default_pool_name
    call["pool"] = pool
    if call.get("deadline") is None:
        streaming = bool(call.get("stream"))
        default_ms = (
            settings.pool_streaming_timeout if streaming else settings.default_command_timeout
        )
        seconds = timeout if timeout is not None else default_ms / 1000
        call["deadline"] = time.time() + float(seconds)
    check_pool(settings, pool)
    from .app import declare_queue

    return Call(
        kwargs=call,
        queue=declare_queue(keys.pool_queue(pool)),
        pool=pool,
        deadline=float(call["deadline"]),
    )


def check_pool(settings: Settings, pool: str) -> None:
    """Raise PoolNotFound for an unknown pool, NoWorkersAvailable when no node serves it."""
    key = (settings.redis_url, pool)
    now = time.monotonic()
    with _alive_lock:
        if now - _alive_seen.get(key, -1e9) < ALIVE_CACHE_SECONDS:
            return
    r = state.redis_client(settings.redis_url)
    if state.pool_is_alive(r, pool):
        with _alive_lock:
            _alive_seen[key] = now
        return
    configured = {p.name for p in settings.pools}
    known = configured | state.known_pools(r)
    if pool not in known:
        raise PoolNotFound(
            f"unknown pool {pool!r}; known pools: {', '.join(sorted(known)) or 'none'}",
            {"pool": pool, "known": sorted(known)},
        )
    raise NoWorkersAvailable(
        f"no live node serves pool {pool!r}; start one with "
        f"`snakepit-tasks worker --pool {pool}`",
        {"pool": pool},
    )


def forget_liveness() -> None:
    """Drop the cached liveness answers (tests, reconfiguration)."""
    with _alive_lock:
        _alive_seen.clear()
