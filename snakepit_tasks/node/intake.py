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
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from queue import Empty
from typing import Any

from kombu.transport import redis as redis_transport
from kombu.utils.encoding import bytes_to_str

from ..call import TASK_NAME
from ..kombu_redis import UndecodableMessage, decode_message, message_id

log = logging.getLogger("snakepit_tasks.node")

#: ``on_poison(queue, raw, reason, call_id)`` — told about every entry that was refused.
PoisonHandler = Callable[[str, bytes, str, str], None]

_handler: PoisonHandler | None = None
_installed = False


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


def _brpop_read(self: Any, **options: Any) -> bool:
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


def install(on_poison: PoisonHandler) -> None:
    """Guard this process's kombu Redis channels (nodes only); ``on_poison`` is told about
    each refused entry."""
    global _handler, _installed
    _handler = on_poison
    if _installed:
        return
    redis_transport.Channel._brpop_read = _brpop_read  # type: ignore[method-assign]
    redis_transport.Channel._get = _get  # type: ignore[method-assign]
    _installed = True
