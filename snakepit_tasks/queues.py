"""The exchange and queues snakepit declares: every queue bound explicitly, by its own name."""

from __future__ import annotations

import functools

from kombu import Exchange, Queue

from . import keys

EXCHANGE = Exchange(keys.EXCHANGE, type="direct", durable=True)


@functools.lru_cache(maxsize=1024)
def declare_queue(name: str) -> Queue:
    """A queue bound to the snakepit exchange with its own name as routing key.

    Never a bare ``Queue(name)``: bound to the default exchange, kombu 5.x delivered one
    message three times.
    """
    return Queue(name, EXCHANGE, routing_key=name)
