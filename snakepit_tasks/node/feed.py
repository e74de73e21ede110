"""The Celery lane's intake feed: a message a node takes is always somewhere in Redis.

kombu's Redis transport pops a message with ``BRPOP`` and records it as unacknowledged in a
second round trip; a node killed in between would lose the message (in no queue, not
unacknowledged, never started). A node therefore never BRPOPs its queues. Instead:

1. while the consumer waits for a message (as kombu's own BRPOP would: never while the node
   is busy, so a busy node leaves the pool queue to its peers), two feeder threads move one
   atomically (``BLMOVE``) from the node's sources (the pool queue, the node's own queue)
   into a list of their own (``snakepit:intake:<node>:feeding:<queue>``), check them (what is
   not a ``snakepit.execute`` message becomes a dead letter there), and move them on into the
   node's staging list ``snakepit:intake:<node>:staging`` (or, when the consumer stopped
   waiting meanwhile, back to the head of its queue);
2. the consumer (:mod:`snakepit_tasks.node.intake`) moves one at a time atomically from
   staging into the node's pulled list ``snakepit:intake:<node>:pulled``;
3. kombu records it as unacknowledged in the same MULTI/EXEC that removes it from the pulled
   list.

What a dead node left in those lists never reached Celery (never started):
:func:`settle` puts it back at the head of the queue it came from. The janitor does that for
dead nodes, a node for its own previous run when it starts, and a stopping node for itself.
Both lists are empty (so gone from Redis) whenever the node is idle.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import redis

from .. import keys, kombu_redis

log = logging.getLogger("snakepit_tasks.node")

BLOCK_SECONDS = 1


class IntakeFeed:
    """Feeds one node's staging list from its pool queue and its own queue, one message per
    wait of the consumer (``wanted``)."""

    def __init__(self, r: redis.Redis, pool: str, node: str) -> None:
        self.r = r
        self.node = node
        self.pool_queue = keys.pool_queue(pool)
        self.node_queue = keys.node_queue(node)
        self.sources = (self.pool_queue, self.node_queue)
        self.staging = keys.intake_staging(node)
        self.pulled = keys.intake_pulled(node)
        self.wanted = threading.Event()  # set while the consumer waits for a message
        #: ``check(queue, raw)``: whether a message may go on (else it was dead-lettered).
        self.check: Callable[[str, bytes], bool] = lambda queue, raw: True
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the feeder threads (before the consumer starts)."""
        for source, which in zip(self.sources, ("pool", "node"), strict=True):
            thread = threading.Thread(target=self._feed, args=(source,), daemon=True,
                                      name=f"snakepit-intake-{which}")
            thread.start()
            self._threads.append(thread)

    def stop_feeding(self) -> None:
        """Feed no more (the feeders leave within BLOCK_SECONDS)."""
        self._stop.set()
        self.wanted.set()

    def stop(self) -> None:
        """Feed no more; wait for the feeders to leave."""
        self.stop_feeding()
        for thread in self._threads:
            thread.join(BLOCK_SECONDS + 1)

    def _feed(self, source: str) -> None:
        lists = [source + suffix for suffix in kombu_redis.PRIORITY_SUFFIXES]
        feeding = keys.intake_feeding(self.node, source)
        while not self._stop.is_set():
            if not self.wanted.wait(BLOCK_SECONDS):
                continue
            if self._stop.is_set():
                return
            try:
                moved = self._move(lists, feeding)
                if moved is None:
                    continue
                if not self.check(source, bytes(moved)):
                    self.r.lrem(feeding, 1, moved)  # a dead letter now
                elif self._claim_wait():
                    self.r.lmove(feeding, self.staging, "RIGHT", "LEFT")
                else:
                    # The consumer stopped waiting meanwhile (the other feeder served it, the
                    # node is busy or stopping): back to its queue, next in line.
                    self.r.lmove(feeding, source, "RIGHT", "RIGHT")
            except redis.RedisError:
                log.debug("intake: Redis unavailable; retrying", exc_info=True)
                self._stop.wait(BLOCK_SECONDS)

    def _claim_wait(self) -> bool:
        """Whether the consumer still waits and this feeder serves it: one message per wait,
        claimed (cleared) before the consumer can take it and wait again."""
        with self._lock:
            if self._stop.is_set() or not self.wanted.is_set():
                return False
            self.wanted.clear()
            return True

    def _move(self, lists: list[str], feeding: str) -> Any:
        """Move one message of ``lists`` (first non-empty, priority order) into ``feeding``;
        blocks on the queue itself (a message in a priority list waits at most BLOCK_SECONDS)."""
        if self.r.exists(*lists[1:]):  # rare: messages sent with a priority
            for name in lists:
                moved = self.r.lmove(name, feeding, "RIGHT", "LEFT")
                if moved is not None:
                    return moved
        return self.r.blmove(lists[0], feeding, BLOCK_SECONDS, "RIGHT", "LEFT")


def source_of(raw: bytes, default: str) -> str:
    """The queue a kombu envelope was sent to (its routing key), else ``default``."""
    try:
        message = json.loads(raw)
        key = message["properties"]["delivery_info"]["routing_key"]
    except (ValueError, TypeError, KeyError, RecursionError):
        return default
    ours = (keys.pool_queue(""), keys.node_queue(""))
    return key if isinstance(key, str) and key.startswith(ours) else default


def settle(r: redis.Redis, pool: str, node: str) -> int:
    """Put what ``node`` left in its staging and pulled lists (it never reached Celery) back
    at the head of the queues it came from; returns how many. For a node that is dead, or
    for a node's previous run (before its consumer starts), or a node that stopped."""
    count = 0
    pool_queue, node_queue = keys.pool_queue(pool), keys.node_queue(node)
    for source in (pool_queue, node_queue):
        while r.lmove(keys.intake_feeding(node, source), source, "RIGHT", "RIGHT") is not None:
            count += 1
    for key in (keys.intake_pulled(node), keys.intake_staging(node)):
        while True:
            raw: Any = r.lindex(key, -1)
            if raw is None:
                break
            target = source_of(bytes(raw), pool_queue)
            if r.lmove(key, target, "RIGHT", "RIGHT") is not None:  # atomic: never lost
                count += 1
    if count:
        log.info("intake: %d message(s) node %s had taken but not started went back to "
                 "their queues", count, node)
    return count
