"""What snakepit relies on in kombu's Redis transport, taken from kombu's own constants.

kombu keeps a queue's messages in a Redis list named after the queue, with priorities 3, 6
and 9 in sibling lists (``<queue><sep><priority>``), and delivered-but-unacknowledged messages
in a hash plus a sorted index. A message is a JSON envelope whose body is base64 of the
Celery task protocol's JSON ``[args, kwargs, embed]``. ``tests/unit/test_kombu_redis.py``
pins all of it against the installed kombu, so an upgrade that changes it fails a test
instead of losing messages.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport.redis import Channel
from kombu.utils.json import dumps

#: Suffixes of the lists that hold one queue's messages, priority 0 first.
PRIORITY_SUFFIXES = tuple(
    "" if step == 0 else f"{Channel.sep}{step}" for step in Channel.priority_steps
)
QUEUE_PARTS = len(PRIORITY_SUFFIXES)
#: kombu's hash of delivered-but-unacknowledged messages, and its index sorted by time.
UNACKED = Channel.unacked_key
UNACKED_INDEX = Channel.unacked_index_key


def channel_client(channel: Any) -> Any:
    """One Redis client per kombu channel, on the channel's connection pool (made again when
    the channel's pool changes): kombu builds a new ``redis.Redis`` for every command it
    sends outside its consumer connection, about half a millisecond of CPU each."""
    pool = channel.pool
    client = channel.__dict__.get("_snakepit_client")
    if client is None or client.connection_pool is not pool:
        client = channel._snakepit_client = channel._create_client()
    return client


@contextmanager
def _conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
    if client:
        yield client
    elif _everywhere or getattr(_local, "ours", False):
        yield channel_client(self)
    else:  # another app's publish in a caller process: kombu's own way
        yield self._create_client()


_local = threading.local()
_everywhere = False
_kombu_put: Any = Channel._put


@contextmanager
def pushing(queue: str, push: Callable[[str, str], None] | None = None) -> Iterator[None]:
    """While inside, this thread's kombu publishes reuse their channel's client, and (with
    ``push``) its next publish to ``queue`` calls ``push(list, raw message)`` instead of its
    ``LPUSH`` to that list (a retried publish calls it again); one whose channel has a key
    prefix, a queue expiry or a publish batch is kombu's as usual."""
    _local.ours, _local.push = True, (queue, push) if push is not None else None
    try:
        yield
    finally:
        _local.ours, _local.push = False, None


def _put(self: Any, queue: str, message: Any, **kwargs: Any) -> None:
    pending = getattr(_local, "push", None)
    if (pending is None or pending[0] != queue or self.global_keyprefix
            or "_publish_batch" in kwargs or (self._expires and queue in self._expires)):
        _kombu_put(self, queue, message, **kwargs)
        return
    pending[1](self._q_for_pri(queue, self._get_message_priority(message, reverse=False)),
               dumps(message))
    _local.push = None


def install(everywhere: bool = False) -> None:
    """Make kombu's Redis channels reuse one client each (``Channel.conn_or_acquire``: the
    publish's LPUSH, the unacked record, the ack) inside :func:`pushing`, or in every channel
    of the process with ``everywhere`` (a node: all its channels are snakepit's), and honour
    :func:`pushing`'s push in their publish (``Channel._put``). Idempotent."""
    global _everywhere
    _everywhere = _everywhere or everywhere
    Channel.conn_or_acquire = _conn_or_acquire  # type: ignore[method-assign]
    Channel._put = _put  # type: ignore[method-assign]


class UndecodableMessage(ValueError):
    """A queue entry that is not a Celery task message kombu could deliver."""


def queue_lists(queue: str) -> list[str]:
    """The lists that hold ``queue``'s messages (QUEUE_PARTS of them, priority 0 first)."""
    return [queue + suffix for suffix in PRIORITY_SUFFIXES]


def queue_length_into(pipe: Any, queue: str) -> None:
    """Queue the LLENs whose sum is ``queue``'s length on a pipeline (QUEUE_PARTS replies)."""
    for name in queue_lists(queue):
        pipe.llen(name)


def queue_length(r: redis.Redis, queue: str) -> int:
    """Messages waiting in a Redis-broker queue (all priority sub-queues included)."""
    with r.pipeline(transaction=False) as pipe:
        queue_length_into(pipe, queue)
        return int(sum(pipe.execute()))


def decode_message(raw: bytes | str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A queue entry's envelope and the keyword arguments of its task call.

    Raises :class:`UndecodableMessage` for anything else (not JSON, not an envelope, an
    unknown body encoding, a body that is not the task protocol's ``[args, kwargs, embed]``);
    its second argument is the task id when the envelope had a readable one.
    """
    try:
        message = json.loads(raw)
    except (ValueError, TypeError, RecursionError) as exc:
        raise UndecodableMessage(f"not JSON: {exc}", "") from None
    if not isinstance(message, dict):
        raise UndecodableMessage(f"the envelope is a {type(message).__name__}, not an object", "")
    task_id = message_id(message)
    try:
        body: Any = message.get("body", "")
        properties = message.get("properties") or {}
        encoding = properties.get("body_encoding") if isinstance(properties, dict) else None
        if encoding == "base64":
            body = base64.b64decode(body, validate=True)
        elif encoding not in (None, ""):
            raise UndecodableMessage(f"unknown body encoding {encoding!r}", task_id)
        decoded = json.loads(body)
    except UndecodableMessage:
        raise
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise UndecodableMessage(f"not a task message: {exc}", task_id) from None
    if not (isinstance(decoded, list) and len(decoded) == 3 and isinstance(decoded[1], dict)):
        raise UndecodableMessage("the body is not a task call [args, kwargs, embed]", task_id)
    return message, decoded[1]


def message_id(message: dict[str, Any]) -> str:
    """The task id an envelope carries ('' when it has none)."""
    headers = message.get("headers")
    task_id = headers.get("id") if isinstance(headers, dict) else None
    return task_id if isinstance(task_id, str) else ""


def encode_message(message: dict[str, Any], kwargs: dict[str, Any], queue: str) -> bytes:
    """``message`` with new task keyword arguments, addressed to ``queue``."""
    body = json.loads(base64.b64decode(message["body"]))
    body[1] = kwargs
    message = dict(message)
    message["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    message["headers"] = dict(message["headers"], kwargsrepr=repr(kwargs))
    props = dict(message["properties"])
    props["delivery_info"] = dict(props.get("delivery_info", {}), routing_key=queue)
    message["properties"] = props
    return json.dumps(message).encode()


def unacked_message(entry: bytes | str) -> bytes:
    """The raw envelope of an entry of kombu's unacked hash (``[message, exchange, key]``)."""
    try:
        return json.dumps(json.loads(entry)[0]).encode()
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise UndecodableMessage(f"not an unacked entry: {exc}") from None
