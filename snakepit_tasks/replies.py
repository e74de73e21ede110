"""Direct replies for synchronous calls: the node pushes the outcome, the caller pops it.

Faster than Celery's result backend (no SUBSCRIBE/UNSUBSCRIBE per call) and safe for many
caller threads at once. ``AsyncResult`` users still get the backend's result.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from . import keys, serialization, zero_copy
from .errors import from_wire, to_wire

REPLY_TTL_SECONDS = 300
MAX_BLOCK_SECONDS = 10.0


def encode_outcome(result: Any = None, error: BaseException | None = None) -> bytes:
    """A reply body: the result, or the error as class name, message and details."""
    if error is None:
        return b'{"ok":true,"result":' + serialization.encode_result(result) + b"}"
    wire = to_wire(error)
    wire["message"] = serialization.redact(str(wire["message"]))
    return json.dumps({"ok": False, "error": wire}, default=str).encode()


def push(pipe: Any, call_id: str, body: bytes) -> None:
    """Queue the reply on a pipeline (executed by the caller of this function)."""
    key = keys.reply(call_id)
    pipe.rpush(key, body)
    pipe.expire(key, REPLY_TTL_SECONDS)


def outcome(body: bytes, settings: Any = None) -> Any:
    """The result in a reply body, or raise its error as the original class. Zero-copy
    handles in the result become tables and arrays (read as ``settings`` say)."""
    transport = settings.zero_copy_transport if settings is not None else "auto"
    data = serialization.decode(body)
    if data.get("ok"):
        result = data.get("result")
        if serialization.has_stand_ins(body):
            result = zero_copy.resolve(result, transport)
        return result
    raise from_wire(data.get("error"))


def pop(r: redis.Redis, call_id: str, deadline: float) -> bytes | None:
    """Block until the call's reply arrives or ``deadline`` (epoch seconds) passes."""
    key = keys.reply(call_id)
    while True:
        block = block_seconds(deadline)
        if block is None:
            return None
        got: Any = r.blpop([key], timeout=block)
        if got:  # the list held one reply: Redis removed it with its last element
            return bytes(got[1])


def block_seconds(deadline: float) -> float | None:
    """How long one BLPOP waits for a reply due by ``deadline`` (None: it is past)."""
    remaining = deadline - time.time()
    if remaining <= 0:
        return None
    return min(MAX_BLOCK_SECONDS, max(0.01, remaining))


def popped(got: Any) -> bytes | None:
    """The reply body in a BLPOP's answer (None when it timed out)."""
    return bytes(got[1]) if got else None
