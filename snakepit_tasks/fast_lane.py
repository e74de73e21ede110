"""The fast lane, caller side: a synchronous call pushed straight to a Redis list.

No Celery task protocol on the hot path: the call message (:class:`~snakepit_tasks.call.Call`
with its id) goes to the pool's or the bound node's fast-lane list, a node moves it atomically
into its own processing list (``BLMOVE``) and removes it only when the call has ended, and the
outcome comes back on the caller's reply list. Routing, sessions, queue limits, the breaker and
every error are the same as on the Celery lane.
"""

from __future__ import annotations

import uuid
from typing import Any

from . import connections, routing, serialization
from .call import Call
from .config import Settings


def encode(call_id: str, call: Call) -> bytes:
    """A fast-lane message."""
    return serialization.encode_args({"id": call_id, "call": call.to_kwargs()})


def decode(raw: bytes) -> tuple[str, dict[str, Any]]:
    """The id and task keyword arguments of a fast-lane message; ValueError when it is not
    one (the node turns that into a dead letter)."""
    message = serialization.decode(raw)
    if not isinstance(message, dict):
        raise ValueError(f"a fast-lane message is an object, got {type(message).__name__}")
    call_id, kwargs = message.get("id"), message.get("call")
    if not isinstance(call_id, str) or not call_id or not isinstance(kwargs, dict):
        raise ValueError("a fast-lane message needs an 'id' string and a 'call' object")
    return call_id, kwargs


def send(settings: Settings, args: Any, kwargs: Any) -> str:
    """Validate and route a call, push it to its fast-lane list; returns its id."""
    route = routing.prepare(settings, args, kwargs)
    call_id = str(uuid.uuid4())
    r = connections.redis_client(settings.redis_url)
    r.lpush(route.fast_queue, encode(call_id, route.call))
    return call_id
