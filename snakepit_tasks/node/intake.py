"""The node's message intake: nothing in a queue can stop a node.

kombu's Redis transport decodes what it pops from a queue before Celery sees it; anything
that is not a Celery task message (not JSON, not an envelope, a body that is not base64, an
unknown body encoding, another task's name) raises inside kombu, Celery treats that as
unrecoverable and the node exits — and meets the same message again when it comes back. The
guard here checks each popped entry with :func:`snakepit_tasks.kombu_redis.decode_message`
first: what fails becomes a dead letter (:mod:`snakepit_tasks.dead_letters`) and the node goes
on. It replaces the two places kombu pops from a queue (``Channel._brpop_read`` for consuming
and ``Channel._get`` for polling) with copies that differ only in that check;
``tests/integration/test_poison_messages.py`` and ``tests/integration/test_kombu_redis.py``
pin them against the installed kombu.

A node's consumer also never BRPOPs its queues (a node killed between kombu's BRPOP and its
recording of the message as unacknowledged would lose it): it takes messages atomically from
its staging list into its pulled list (``BLMOVE``), and kombu's unacknowledged record is
written in the MULTI/EXEC that removes the message from the pulled list. See
:mod:`snakepit_tasks.node.feed`. The delivery tag of each such message is kept by task id
(:data:`delivered`): a call's finish may remove the unacknowledged record itself
(:mod:`snakepit_tasks.node.celery_finish`), and kombu's acknowledgement then skips Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from queue import Empty
from typing import TYPE_CHECKING, Any

from kombu.transport import redis as redis_transport
from kombu.transport.virtual import base
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps
from redis.exceptions import ResponseError

from .. import kombu_redis, resp
from ..call import TASK_NAME
from ..kombu_redis import (
    UndecodableMessage,
    channel_client,
    decode_message,
    message_id,
)
from .feed import source_of

if TYPE_CHECKING:
    from .feed import IntakeFeed

log = logging.getLogger("snakepit_tasks.node")

#: ``on_poison(queue, raw, reason, call_id)`` — told about every entry that was refused.
PoisonHandler = Callable[[str, bytes, str, str], None]

_handler: PoisonHandler | None = None
_feed: IntakeFeed | None = None
_installed = False
_kombu_brpop_start: Any = redis_transport.Channel._brpop_start


class Delivered:
    """The kombu delivery tags of the messages this node's consumer took from its pulled
    list, by task id, with the keys of kombu's unacknowledged record: what a call's finish
    needs to acknowledge its message in its own MULTI/EXEC. A tag acknowledged that way is
    remembered until kombu's own acknowledgement, which then only updates kombu's state."""

    #: At most this many of each are kept (the oldest go first): a node holds a few calls.
    LIMIT = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tags: OrderedDict[str, tuple[str, str, str] | None] = OrderedDict()
        self._acked: OrderedDict[str, None] = OrderedDict()

    def add(self, task_id: str, tag: str, unacked: str, index: str) -> None:
        """Message ``tag`` of ``task_id`` was recorded unacknowledged in ``unacked``/``index``.
        Two messages of one task id at once (a copy) are acknowledged by kombu only."""
        with self._lock:
            self._tags[task_id] = None if task_id in self._tags else (tag, unacked, index)
            while len(self._tags) > self.LIMIT:
                self._tags.popitem(last=False)

    def pop(self, task_id: str) -> tuple[str, str, str] | None:
        """The (tag, unacked key, index key) of ``task_id``'s message, forgotten here."""
        with self._lock:
            return self._tags.pop(task_id, None)

    def acked(self, tag: str) -> None:
        """``tag``'s unacknowledged record is gone from Redis (a call's finish removed it)."""
        with self._lock:
            self._acked[tag] = None
            while len(self._acked) > self.LIMIT:
                self._acked.popitem(last=False)

    def take_acked(self, tag: str) -> bool:
        """Whether ``tag`` was acknowledged in Redis already (then forgotten here)."""
        with self._lock:
            return self._acked.pop(tag, 0) is None


#: This process's delivered messages (one consumer per node process).
delivered = Delivered()


def check_entry(raw: bytes | str) -> dict[str, Any]:
    """The envelope of a queue entry that is a ``snakepit.execute`` message Celery can take;
    raises UndecodableMessage (with the call id in ``args[1]`` when one was readable)."""
    message, _ = decode_message(raw)
    call_id = message_id(message)
    headers = message.get("headers")
    if not isinstance(headers, dict) or headers.get("task") != TASK_NAME:
        task = headers.get("task") if isinstance(headers, dict) else None
        raise UndecodableMessage(f"not a {TASK_NAME} message (task {task!r})", call_id)
    if not call_id:
        raise UndecodableMessage("the message has no task id", "")
    if message.get("content-type") != "application/json":
        raise UndecodableMessage(
            f"content type {message.get('content-type')!r} is not application/json", call_id
        )
    return message


def _accept(channel: Any, item: bytes, queue: str) -> dict[str, Any] | None:
    try:
        return check_entry(item)
    except UndecodableMessage as exc:
        call_id = exc.args[1] if len(exc.args) > 1 else ""
        if _handler is not None:
            try:
                _handler(queue, item, str(exc.args[0]), call_id)
            except Exception:
                log.exception("could not record a dead letter from %s", queue)
        return None


def _fed(channel: Any) -> IntakeFeed | None:
    """This node's feed when ``channel`` consumes only the node's own queues."""
    feed = _feed
    if feed is None or channel.global_keyprefix:
        return None
    queues = set(channel.active_queues)
    return feed if queues and queues <= set(feed.sources) else None


def _brpop_start(self: Any, timeout: Any = None) -> None:
    feed = _fed(self)
    if feed is None:
        self._snakepit_fed = None
        _kombu_brpop_start(self, timeout)
        return None
    if timeout is None:
        timeout = self.brpop_timeout
    if not self._queue_cycle.consume(len(self.active_queues)):
        return None
    connection = self.client.connection
    feed.consumer_id = _client_id(connection)
    source = feed.next_wait()
    self._in_poll = connection
    self._brpop_sent_at = time.monotonic()
    self._snakepit_fed = (feed, source)
    connection.send_command("BLMOVE", source, feed.pulled, "RIGHT", "LEFT", timeout or 0)
    return None


def _client_id(connection: Any) -> int | None:
    """The Redis client id of ``connection`` (asked once per socket); None where Redis
    refuses CLIENT (an ACL): the feeder cannot wake the consumer then, whose wait on the pool
    queue ends by its timeout (``brpop_timeout``) before it takes a staged message."""
    if connection._sock is None:
        connection.connect()
    sock = connection._sock
    if getattr(connection, "_snakepit_sock", None) is not sock:
        connection.send_command("CLIENT", "ID")
        try:
            connection._snakepit_client_id = int(connection.read_response())
        except ResponseError:
            connection._snakepit_client_id = None
        connection._snakepit_sock = sock
    found = connection._snakepit_client_id
    return None if found is None else int(found)


def _fed_read(self: Any, feed: IntakeFeed, source: str, **options: Any) -> bool:
    item = None
    try:
        item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
    except self.connection_errors:
        self.client.connection.disconnect()
        raise
    finally:
        feed.waited(source, item is not None)
    if item is None:
        raise Empty()
    item = bytes(item)
    dest = source_of(item, feed.pool_queue)
    if dest not in self.connection._callbacks:
        dest = feed.pool_queue
    self._queue_cycle.rotate(dest)
    message = _accept(self, item, dest)
    if message is None:
        feed.r.lrem(feed.pulled, 1, item)  # type: ignore[arg-type]
        return True
    self._snakepit_pulled = (feed.pulled, item)
    try:
        self.connection._deliver(message, dest)
    finally:
        self._snakepit_pulled = None
    return True


def _append(self: Any, message: Any, delivery_tag: Any) -> None:
    """kombu's QoS.append; for a message from the node's pulled list, the unacknowledged
    record and its removal from that list in one MULTI/EXEC."""
    pulled = getattr(self.channel, "_snakepit_pulled", None)
    if pulled is None:
        _kombu_append(self, message, delivery_tag)
        return
    key, raw = pulled
    delivery = message.delivery_info
    unacked, index = self.unacked_key, self.unacked_index_key
    record = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
    resp.transaction(channel_client(self.channel), resp.pack("ZADD", index, time.time(),
                                                             delivery_tag),
                     resp.pack("HSET", unacked, delivery_tag, record),
                     resp.pack("LREM", key, 1, raw))
    base.QoS.append(self, message, delivery_tag)
    task_id = (message.headers or {}).get("id")
    if isinstance(task_id, str) and task_id:
        delivered.add(task_id, delivery_tag, unacked, index)


_kombu_append: Any = redis_transport.QoS.append
_acknowledge: Any = redis_transport.QoS.ack


def _ack(self: Any, delivery_tag: Any) -> None:
    """kombu's QoS.ack; for a message whose call's finish removed its unacknowledged record
    already, kombu's in-process state only."""
    if delivered.take_acked(delivery_tag):
        base.QoS.ack(self, delivery_tag)
        return
    _acknowledge(self, delivery_tag)


def _brpop_read(self: Any, **options: Any) -> bool:
    fed = getattr(self, "_snakepit_fed", None)
    if fed is not None:
        self._snakepit_fed = None
        try:
            return _fed_read(self, *fed, **options)
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()
    try:
        try:
            dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
        except self.connection_errors:
            # if there's a ConnectionError, disconnect so the next iteration reconnects.
            self.client.connection.disconnect()
            raise
        if dest__item:
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            message = _accept(self, item, dest)
            if message is not None:
                self.connection._deliver(message, dest)
            return True
        raise Empty()
    finally:
        self._in_poll = None
        flush = getattr(self, "_flush_brpop_reauth", None)
        if flush is not None:
            flush()


def _get(self: Any, queue: str) -> dict[str, Any]:
    with self.conn_or_acquire() as client:
        for pri in self.priority_steps:
            item = client.rpop(self._q_for_pri(queue, pri))
            if item:
                self._maybe_update_queues_expire(client, queue)
                message = _accept(self, item, queue)
                if message is not None:
                    return message
                raise Empty()
        self._maybe_update_queues_expire(client, queue)
        raise Empty()


def install(on_poison: PoisonHandler, feed: IntakeFeed | None = None) -> None:
    """Guard this process's kombu Redis channels (nodes only); ``on_poison`` is told about
    each refused entry. With ``feed``, channels that consume only the node's queues take
    their messages from it (see :mod:`snakepit_tasks.node.feed`)."""
    global _handler, _feed, _installed, _acknowledge
    _handler = on_poison
    _feed = feed
    if feed is not None:
        feed.check = lambda queue, raw: _accept(None, raw, queue) is not None
    if _installed:
        return
    kombu_redis.install(everywhere=True)
    redis_transport.Channel._brpop_start = _brpop_start  # type: ignore[method-assign]
    redis_transport.Channel._brpop_read = _brpop_read  # type: ignore[method-assign]
    redis_transport.Channel._get = _get  # type: ignore[method-assign]
    redis_transport.QoS.append = _append  # type: ignore[method-assign]
    _acknowledge = redis_transport.QoS.ack  # kombu's, or kombu_fixes' guard around it
    redis_transport.QoS.ack = _ack  # type: ignore[method-assign]
    _installed = True
