"""Host tools as data in Redis: one hash of records per session, one lease per registrant.

A record names its owner, the registering process; a record whose owner's lease has expired
is not offered (that process is gone) and may be replaced. The hash expires like the session:
``session_default_ttl`` after registration, kept as long as the session by the owner's
listener (``broker/host_tool_sync.lua``), deleted with it by ``sessions.delete``.
Imports neither Celery nor gRPC: the node reads the same records.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Iterable
from typing import Any

import redis

from .. import keys, lua
from ..connections import text
from ..errors import ToolRegistrationError
from .spec import HostToolSpec

#: Attempts to write a record while other processes change the same name.
_REGISTER_ATTEMPTS = 5


def new_registrant_id() -> str:
    """An id for one registering process: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def encode_record(spec: HostToolSpec, owner: str) -> str:
    """The JSON record stored for ``spec``."""
    return json.dumps(
        {
            "name": spec.name,
            "description": spec.description,
            "exposed": spec.exposed,
            "metadata": spec.metadata,
            "owner": owner,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "registered_at": time.time(),
        },
        separators=(",", ":"),
    )


def decode_record(raw: bytes | str | None) -> dict[str, Any] | None:
    """A stored record, or None when absent or unreadable."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) and value.get("owner") else None


def spec_of(record: dict[str, Any]) -> HostToolSpec:
    """The spec a record describes."""
    metadata = record.get("metadata")
    return HostToolSpec(
        name=str(record.get("name", "")),
        description=str(record.get("description", "")),
        metadata=metadata if isinstance(metadata, dict) else {},
        exposed=bool(record.get("exposed", True)),
    )


def describe_owner(record: dict[str, Any]) -> str:
    """Who registered a record, for messages: ``pid 123 on host``."""
    return f"pid {record.get('pid', '?')} on {record.get('host', '?')}"


# -- leases ------------------------------------------------------------------------------------
def hold_lease(r: redis.Redis, owner: str, ttl_ms: int) -> None:
    """Write (or refresh) the lease of registrant ``owner``."""
    r.set(keys.host_registrant(owner), os.getpid(), px=ttl_ms)


def drop_lease(r: redis.Redis, owner: str) -> None:
    """Remove the lease and the pending requests of registrant ``owner``."""
    r.delete(keys.host_registrant(owner), keys.host_requests(owner))


def alive(r: redis.Redis, owners: Iterable[str]) -> dict[str, bool]:
    """Whether each registrant still holds its lease (one round trip)."""
    distinct = sorted(set(owners))
    if not distinct:
        return {}
    with r.pipeline(transaction=False) as pipe:
        for owner in distinct:
            pipe.exists(keys.host_registrant(owner))
        found = pipe.execute()
    return {owner: bool(up) for owner, up in zip(distinct, found, strict=True)}


# -- records -----------------------------------------------------------------------------------
def register(
    r: redis.Redis, session_id: str, spec: HostToolSpec, owner: str, ttl_ms: int
) -> None:
    """Record ``spec`` for ``session_id`` as registrant ``owner``'s; ToolRegistrationError
    (reason duplicate_tool) when a live registrant, this one included, has that name."""
    key = keys.host_tools(session_id)
    script = lua.script(r, "host_tool_register")
    new = encode_record(spec, owner)
    for _ in range(_REGISTER_ATTEMPTS):
        raw: Any = r.hget(key, spec.name)
        seen = text(raw) if raw is not None else ""
        current = decode_record(raw)
        if current is not None:
            holder = str(current["owner"])
            if holder == owner or alive(r, [holder]).get(holder):
                by = "this process" if holder == owner else describe_owner(current)
                raise ToolRegistrationError(
                    f"host tool {spec.name!r} is already registered for session "
                    f"{session_id!r} (by {by}); unregister it first or choose another name",
                    {"reason": "duplicate_tool", "name": spec.name, "session_id": session_id},
                )
        if script(keys=[key], args=[spec.name, new, seen, ttl_ms]):
            return
    raise ToolRegistrationError(
        f"host tool {spec.name!r} of session {session_id!r} kept changing while it was "
        "registered; try again",
        {"reason": "duplicate_tool", "name": spec.name, "session_id": session_id},
    )


def remove(r: redis.Redis, session_id: str, name: str, owner: str = "") -> bool:
    """Remove a tool's record (only ``owner``'s when given); True when one was removed."""
    script = lua.script(r, "host_tool_remove")
    return bool(script(keys=[keys.host_tools(session_id)], args=[name, owner]))


def remove_many(r: redis.Redis, tools: Iterable[tuple[str, str]], owner: str) -> None:
    """Remove ``owner``'s records of ``(session_id, name)`` pairs (one round trip)."""
    pairs = list(tools)
    if not pairs:
        return
    script = lua.script(r, "host_tool_remove")
    with r.pipeline(transaction=False) as pipe:
        for session_id, name in pairs:
            script(keys=[keys.host_tools(session_id)], args=[name, owner], client=pipe)
        pipe.execute()


def forget_session(r: redis.Redis, session_id: str) -> None:
    """Delete every host tool of a session (the session ends)."""
    r.delete(keys.host_tools(session_id))


def live_records(r: redis.Redis, session_id: str) -> dict[str, dict[str, Any]]:
    """The session's records whose registrants are alive, by name (two round trips)."""
    raw: dict[Any, Any] = r.hgetall(keys.host_tools(session_id))
    records = {text(k): decode_record(v) for k, v in raw.items()}
    valid = {k: v for k, v in records.items() if v is not None}
    up = alive(r, (str(v["owner"]) for v in valid.values()))
    return {k: v for k, v in valid.items() if up.get(str(v["owner"]))}


def find(r: redis.Redis, session_id: str, name: str) -> dict[str, Any] | None:
    """The record of one tool (whatever its owner's state), or None."""
    raw: Any = r.hget(keys.host_tools(session_id), name)
    return decode_record(raw)


def sync(r: redis.Redis, session_ids: Iterable[str]) -> set[str]:
    """Keep each session's tools as long as the session; return the sessions whose tools are
    gone (expired, or deleted with the session)."""
    ids = list(session_ids)
    if not ids:
        return set()
    script = lua.script(r, "host_tool_sync")
    with r.pipeline(transaction=False) as pipe:
        for sid in ids:
            script(keys=[keys.host_tools(sid), keys.session(sid)], client=pipe)
        found = pipe.execute()
    return {sid for sid, there in zip(ids, found, strict=True) if not there}
