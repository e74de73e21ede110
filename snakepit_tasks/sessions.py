"""Sessions: which worker holds a caller's state. Inspect, list and end them.

A session is bound by the node whose worker runs its first call (see broker/start_call.lua);
later calls follow it there according to the pool's affinity mode.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from celery import Celery

from . import keys, state

CLEANUP_COMMAND = "__cleanup_session__"


def _redis(app: Celery | None) -> redis.Redis:
    from .app import default_app

    return state.redis_client((app or default_app()).snakepit_settings.redis_url)


def _decode(raw: dict[Any, Any]) -> dict[str, Any]:
    info: dict[str, Any] = {state.text(k): state.text(v) for k, v in raw.items()}
    for field in ("created", "last_used"):
        if field in info:
            info[field] = float(info[field])
    return info


def get(session_id: str, *, app: Celery | None = None) -> dict[str, Any] | None:
    """The session's binding (worker, node, pool, created, last_used, ttl), or None."""
    r = _redis(app)
    with r.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.session(session_id))
        pipe.ttl(keys.session(session_id))
        raw, ttl = pipe.execute()
    if not raw:
        return None
    return {"session_id": session_id, **_decode(raw), "ttl": int(ttl)}


def list_sessions(pool: str | None = None, *, app: Celery | None = None) -> list[dict[str, Any]]:
    """Live sessions, most recently used first (optionally only those of ``pool``)."""
    r = _redis(app)
    members: list[Any] = r.zrevrange(keys.sessions(), 0, -1)
    ids = [state.text(s) for s in members]
    if not ids:
        return []
    with r.pipeline(transaction=False) as pipe:
        for sid in ids:
            pipe.hgetall(keys.session(sid))
        replies = pipe.execute()
    found = []
    stale = []
    for sid, raw in zip(ids, replies, strict=True):
        if not raw:
            stale.append(sid)
            continue
        info = {"session_id": sid, **_decode(raw)}
        if pool is None or info.get("pool") == pool:
            found.append(info)
    if stale:
        r.zrem(keys.sessions(), *stale)
    return found


def unbind(r: redis.Redis, session_id: str) -> None:
    """Forget where a session lives (its next call binds it afresh)."""
    with r.pipeline(transaction=True) as pipe:
        pipe.delete(keys.session(session_id))
        pipe.zrem(keys.sessions(), session_id)
        pipe.execute()


def delete(session_id: str, *, app: Celery | None = None, timeout: float = 10.0) -> bool:
    """End a session: run the adapter's session cleanup on its worker, then forget it.

    Returns False when the session did not exist.
    """
    from .app import declare_queue, default_app
    from .caller import wait
    from .tasks import EXECUTE

    the_app = app or default_app()
    r = _redis(the_app)
    info = get(session_id, app=the_app)
    if info is None:
        return False
    node = info.get("node")
    if node and r.exists(keys.node_lease(node)):
        # Sent by name: the node runs the adapter's cleanup_session on the bound worker.
        result = the_app.send_task(
            EXECUTE,
            kwargs={
                "command": CLEANUP_COMMAND,
                "pool": info.get("pool"),
                "session_id": session_id,
                "worker": info.get("worker"),
                "deadline": time.time() + timeout,
            },
            queue=declare_queue(keys.node_queue(node)),
        )
        try:
            wait(result, timeout + 5)
        finally:
            unbind(r, session_id)
    else:
        unbind(r, session_id)
    return True
