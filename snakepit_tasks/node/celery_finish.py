"""The Celery lane's part of a call's finish: its result in Celery's backend and the
acknowledgement of its message, in the node's finish MULTI/EXEC.

After a task returns, Celery stores its result (a GET, then SETEX and PUBLISH in a MULTI/EXEC)
and then acknowledges its message (ZREM and HDEL of kombu's unacknowledged record in another):
two more round trips after the node's own finish. For a call that succeeded, carries no
canvas (callbacks, chain, chord, group) and whose result backend and broker are the node's
Redis, the node writes the same entry Celery's Redis backend would (its meta, key, expiry and
publish) and removes the message's unacknowledged record in its finish, all or nothing. Celery
then skips its own store (the request's ``ignore_result``) and kombu's acknowledgement only
updates its in-process state (:mod:`snakepit_tasks.node.intake`). When the finish fails, or
the call does not qualify, Celery stores and acknowledges as before. The acknowledgement is
never folded without the result: a message is acknowledged only once its outcome is stored.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend

from ..config import Settings
from .intake import delivered

log = logging.getLogger("snakepit_tasks.node")


class CeleryOutcome:
    """What a Celery-lane call adds to its finish (see the module's docstring)."""

    def __init__(self, task: Any, call_id: str, settings: Settings) -> None:
        self.task = task
        self.call_id = call_id
        self.same_redis = settings.backend == settings.redis_url == settings.broker
        self._stored = False
        self._tag: str | None = None

    def into(self, pipe: Any, result: Any, failure: BaseException | None) -> bool:
        """Queue the result's entry and the message's acknowledgement on ``pipe`` (the
        finish's MULTI/EXEC); False when Celery is to store and acknowledge as usual."""
        entry = delivered.pop(self.call_id)
        if failure is not None or not self.same_redis:
            return False
        try:
            request = self.task.request
            if any(getattr(request, name, None) for name in ("callbacks", "chain", "chord",
                                                               "group")):
                return False
            store = not (request.ignore_result or self.task.ignore_result)
            if store:
                backend = self.task.backend
                if type(backend) is not RedisBackend:
                    return False
                meta = backend._get_result_meta(
                    result=backend.encode_result(result, states.SUCCESS),
                    state=states.SUCCESS, traceback=None, request=request)
                meta["task_id"] = self.call_id
                value = backend.encode(meta)
                if isinstance(value, str) and len(value) > backend._MAX_STR_VALUE_SIZE:
                    return False  # Celery raises its own error for it
                key = backend.get_key_for_task(self.call_id)
                if backend.expires:
                    pipe.setex(key, backend.expires, value)
                else:
                    pipe.set(key, value)
                pipe.publish(key, value)
        except Exception:  # Celery's own store reports what is wrong with the result
            log.debug("call %s: its result is stored by Celery", self.call_id, exc_info=True)
            return False
        if entry is not None:
            tag, unacked, index = entry
            pipe.zrem(index, tag)
            pipe.hdel(unacked, tag)
            self._tag = tag
        self._stored = store
        return store or entry is not None

    def recorded(self) -> None:
        """The finish's MULTI/EXEC ran: Celery neither stores nor acknowledges in Redis."""
        if self._stored:
            self.task.request.ignore_result = True
        if self._tag is not None:
            delivered.acked(self._tag)
