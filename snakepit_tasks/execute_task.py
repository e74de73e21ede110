"""The Celery task class that carries calls, ``snakepit.execute``.

Sending validates and routes the call (:mod:`snakepit_tasks.routing`); running it is the
node's business (``app.snakepit_node``), so a caller never loads node code.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Task
from celery.result import AsyncResult
from kombu.exceptions import EncodeError

from . import routing, telemetry
from .call import TASK_NAME
from .connections import redis_errors_as_snakepit
from .errors import ConfigurationError, SerializationError, SnakepitError

EXECUTE = TASK_NAME


class ExecuteTask(Task):
    """Runs one tool call on a worker of the node that receives it."""

    name = EXECUTE
    acks_late = True
    typing = False  # the call is validated by Call.parse, on both sides
    throws = (SnakepitError,)  # expected failures: logged without a traceback

    def run(self, *args: Any, **kwargs: Any) -> Any:
        node = getattr(self.app, "snakepit_node", None)
        if node is None:
            raise ConfigurationError(
                "snakepit.execute ran outside a snakepit node; start nodes with "
                "`snakepit-tasks worker` (task_always_eager is not supported)"
            )
        return node.run_task(self, args, kwargs)

    def apply_async(
        self, args: Any = None, kwargs: Any = None, **options: Any
    ) -> AsyncResult:
        with redis_errors_as_snakepit("sending the call"):
            route = routing.prepare(self.app.snakepit_settings, args, kwargs)
            options.setdefault("queue", route.queue)
            try:
                sent = super().apply_async((), route.call.to_kwargs(), **options)
            except EncodeError as exc:
                raise SerializationError(f"the call could not be encoded: {exc}") from None
        call = route.call
        telemetry.emit(("snakepit", "call", "sent"), {"system_time": time.time_ns()}, {
            "call_id": sent.id, "tool": call.command, "pool": call.pool, "queue": route.queue.name,
            "session_id": call.session_id, "stream": call.stream})
        return sent
