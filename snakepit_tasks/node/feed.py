"""The Celery lane's intake: a message a node takes is always somewhere in Redis.

kombu's Redis transport pops a message with ``BRPOP`` and records it as unacknowledged in a
second round trip; a node killed in between would lose the message (in no queue, not
unacknowledged, never started). A node therefore never BRPOPs its queues. Instead, while the
consumer waits for a message (as kombu's own BRPOP would: never while the node is busy, so a
busy node leaves the pool queue to its peers):

1. the consumer (:mod:`snakepit_tasks.node.intake`) moves one message atomically (``BLMOVE``)
   from the pool queue into the node's pulled list ``snakepit:intake:<node>:pulled``;
2. meanwhile one feeder thread moves one atomically from the node's own queue into a list of
   its own (``snakepit:intake:<node>:feeding:<queue>``), checks it (what is not a
   ``snakepit.execute`` message becomes a dead letter there), and moves it on into the node's
   staging list ``snakepit:intake:<node>:staging`` (or, when the consumer stopped waiting
   meanwhile, back to the head of its queue); then it wakes the consumer (``CLIENT
   UNBLOCK``), whose next wait takes the staged message (staging → pulled) first;
3. kombu records the message as unacknowledged in the same MULTI/EXEC that removes it from
   the pulled list.

``BLMOVE`` blocks on one list: a message sent with a priority (kombu keeps those in sub-lists,
served only while the base list is empty) is moved to the base list's head by
``broker/promote_priority.lua`` when that is empty, at most a second after it came.

What a dead node left in those lists never reached Celery (never started):
:func:`settle` puts it back at the head of the queue it came from. The janitor does that for
dead nodes, a node for its own previous run when it starts, and a stopping node for itself.
The lists are empty (so gone from Redis) whenever the node is idle.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from .. import keys, kombu_redis, lua

log = logging.getLogger("snakepit_tasks.node")

BLOCK_SECONDS = 1
#: Between two tries to wake the consumer (its wait may not have reached Redis yet).
WAKE_RETRY_SECONDS = 0.001


class IntakeFeed:
    """One node's intake: which list the consumer's next wait takes from (:meth:`next_wait`),
    and the feeder that stages messages of the node's own queue for it."""

    def __init__(self, r: redis.Redis, pool: str, node: str) -> None:
        self.r = r
        self.node = node
        self.pool_queue = keys.pool_queue(pool)
        self.node_queue = keys.node_queue(node)
        self.sources = (self.pool_queue, self.node_queue)
        self.staging = keys.intake_staging(node)
        self.pulled = keys.intake_pulled(node)
        self.wanted = threading.Event()  # set while the consumer waits on the pool queue
        #: ``check(queue, raw)``: whether a message may go on (else it was dead-lettered).
        self.check: Callable[[str, bytes], bool] = lambda queue, raw: True
        #: The Redis client id of the consumer's connection (what CLIENT UNBLOCK names).
        self.consumer_id: int | None = None
        self.staged = False  # a message is in staging, or on its way, for the consumer
        self._waits = 0  # the consumer's waits on the pool queue so far,
        self._returned = 0  # and how many of them are over
        self._promoted_at = 0.0
        self._promote = lua.script(r, "promote_priority")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the feeder thread (before the consumer starts)."""
        thread = threading.Thread(target=self._feed, args=(self.node_queue,), daemon=True,
                                  name="snakepit-intake-node")
        thread.start()
        self._threads.append(thread)

    def stop_feeding(self) -> None:
        """Feed no more, and take nothing more from the pool queue (the feeder leaves within
        BLOCK_SECONDS)."""
        self._stop.set()
        self.wanted.set()

    def stop(self) -> None:
        """Feed no more; wait for the feeder to leave."""
        self.stop_feeding()
        for thread in self._threads:
            thread.join(BLOCK_SECONDS + 1)

    # -- the consumer's side ----------------------------------------------------------------
    def next_wait(self) -> str:
        """The list the consumer's next wait moves one message from into the pulled list:
        staging when a message is staged for it (or the node stops), else the pool queue
        (the feeder may then stage one and wake it)."""
        with self._lock:
            if self.staged or self._stop.is_set():
                return self.staging
            self.wanted.set()
            self._waits += 1
        self._promote_due()
        return self.pool_queue

    def waited(self, source: str, took: bool) -> None:
        """The consumer's wait on ``source`` is over; ``took``: it moved a message."""
        with self._lock:
            if source == self.staging:
                if took:
                    self.staged = False
            else:
                self.wanted.clear()
                self._returned = self._waits

    def _promote_due(self) -> None:
        now = time.monotonic()
        if now - self._promoted_at < BLOCK_SECONDS:
            return
        self._promoted_at = now
        try:
            self._promote(keys=kombu_redis.queue_lists(self.pool_queue), args=[])
        except redis.RedisError:
            log.debug("intake: could not look at the pool queue's priority lists",
                      exc_info=True)

    # -- the feeder -------------------------------------------------------------------------
    def _feed(self, source: str) -> None:
        lists = kombu_redis.queue_lists(source)
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
                    continue
                wait = self._claim_wait()
                if wait is None:
                    # The consumer stopped waiting meanwhile (it took a message from the pool
                    # queue, the node is busy or stopping): back to its queue, next in line.
                    self.r.lmove(feeding, source, "RIGHT", "RIGHT")
                    continue
                try:
                    self.r.lmove(feeding, self.staging, "RIGHT", "LEFT")
                except BaseException:
                    with self._lock:
                        self.staged = False  # it stays in feeding; put back below
                    raise
                self._wake(wait)
            except Exception:
                log.debug("intake: Redis unavailable; retrying", exc_info=True)
                self._stop.wait(BLOCK_SECONDS)
                self._put_back(feeding, source)

    def _claim_wait(self) -> int | None:
        """The consumer's current wait on the pool queue, claimed for a staged message (one
        message per wait, claimed before the consumer can wait again); None when it does not
        wait."""
        with self._lock:
            if self._stop.is_set() or not self.wanted.is_set():
                return None
            self.wanted.clear()
            self.staged = True
            return self._waits

    def _wake(self, wait: int) -> None:
        """End the consumer's wait ``wait`` on the pool queue (its next wait takes the staged
        message): CLIENT UNBLOCK, retried while that wait has not reached Redis yet."""
        deadline = time.monotonic() + BLOCK_SECONDS
        while self._returned < wait and not self._stop.is_set():
            consumer = self.consumer_id
            if consumer is None:
                return  # it cannot be woken (see intake._client_id): its wait times out
            if self.r.client_unblock(consumer):
                return
            if time.monotonic() > deadline:
                return  # its wait times out by itself
            self._stop.wait(WAKE_RETRY_SECONDS)

    def _put_back(self, feeding: str, source: str) -> None:
        """What a failed round left in ``feeding``: back to the head of its queue."""
        try:
            while self.r.lmove(feeding, source, "RIGHT", "RIGHT") is not None:
                pass
        except redis.RedisError:
            pass  # still in feeding: the next failed round, or settle, puts it back

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
