"""Sessions as data in Redis: read, list and unbind them (no Celery, no caller API)."""

from __future__ import annotations

from typing import Any

import redis

from . import keys
from .connections import text


def _decode(raw: dict[Any, Any]) -> dict[str, Any]:
    info: dict[str, Any] = {text(k): text(v) for k, v in raw.items()}
    for field in ("created", "last_used"):
        if field in info:
            info[field] = float(info[field])
    return info


def get(r: redis.Redis, session_id: str) -> dict[str, Any] | None:
    """The session's binding (worker, node, pool, created, last_used, ttl), or None."""
    with r.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.session(session_id))
        pipe.ttl(keys.session(session_id))
        raw, ttl = pipe.execute()
    if not raw:
        return None
    return {"session_id": session_id, **_decode(raw), "ttl": int(ttl)}


def list_sessions(r: redis.Redis, pool: str | None = None) -> list[dict[str, Any]]:
    """Live sessions, most recently used first (optionally only those of ``pool``); drops
    the ids of expired ones from the index as it goes."""
    members: list[Any] = r.zrevrange(keys.sessions(), 0, -1)
    ids = [text(s) for s in members]
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


def prune(r: redis.Redis, older_than: float) -> int:
    """Drop index entries of sessions not used since ``older_than`` (epoch s) whose hash has
    expired; returns how many were dropped."""
    members: list[Any] = r.zrangebyscore(keys.sessions(), "-inf", older_than)
    if not members:
        return 0
    with r.pipeline(transaction=False) as pipe:
        for sid in members:
            pipe.exists(keys.session(text(sid)))
        alive = pipe.execute()
    stale = [m for m, up in zip(members, alive, strict=True) if not up]
    if stale:
        r.zrem(keys.sessions(), *stale)
    return len(stale)


def count(r: redis.Redis) -> int:
    """Sessions in the index (the quota counts these)."""
    return int(r.zcard(keys.sessions()))


def unbind(r: redis.Redis, session_id: str) -> None:
    """Forget where a session lives (its next call binds it afresh)."""
    with r.pipeline(transaction=True) as pipe:
        pipe.delete(keys.session(session_id))
        pipe.zrem(keys.sessions(), session_id)
        pipe.execute()
