"""Dead letters: messages a node could not decode or accept, kept for a look, never run.

A node that takes such a message from one of its queues records it here (queue, reason, a
short redacted preview, the call id when one could be read), tells a caller waiting on that id,
and keeps serving. ``snakepit-tasks status --dead-letters`` lists them; ``--drop-dead-letters``
(or :func:`drop`) removes them. The list is capped and expires.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from . import keys
from .serialization import redact

#: Newest entries kept per pool, and how long the list lives after its last entry (s).
MAX_ENTRIES = 1000
TTL_SECONDS = 7 * 24 * 3600
PREVIEW_CHARS = 200


def preview(raw: bytes | str, limit: int = PREVIEW_CHARS) -> str:
    """The start of a message, printable and with secrets masked."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    text = redact(text[: limit * 2])
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text[:limit] + ("..." if len(text) > limit else "")


def record(
    r: redis.Redis,
    pool: str,
    *,
    queue: str,
    reason: str,
    raw: bytes | str = b"",
    call_id: str = "",
    node: str = "",
) -> dict[str, Any]:
    """Add one dead letter; returns the entry."""
    entry = {
        "at": time.time(),
        "queue": queue,
        "reason": reason,
        "call_id": call_id,
        "node": node,
        "size": len(raw),
        "preview": preview(raw),
    }
    key = keys.dead_letters(pool)
    with r.pipeline(transaction=False) as pipe:
        pipe.lpush(key, json.dumps(entry))
        pipe.ltrim(key, 0, MAX_ENTRIES - 1)
        pipe.expire(key, TTL_SECONDS)
        pipe.execute()
    return entry


def list_entries(r: redis.Redis, pool: str, limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` dead letters of ``pool``."""
    raw: list[Any] = r.lrange(keys.dead_letters(pool), 0, max(0, limit - 1))
    return [json.loads(item) for item in raw]


def count(r: redis.Redis, pool: str) -> int:
    """How many dead letters ``pool`` has."""
    return int(r.llen(keys.dead_letters(pool)))


def drop(r: redis.Redis, pool: str) -> int:
    """Remove ``pool``'s dead letters; returns how many there were."""
    with r.pipeline(transaction=True) as pipe:
        pipe.llen(keys.dead_letters(pool))
        pipe.delete(keys.dead_letters(pool))
        n, _ = pipe.execute()
    return int(n)
