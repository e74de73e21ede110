"""Celery task events for fast-lane calls, so Flower (and any event receiver) sees them.

A call on the Celery lane gets ``task-received``, ``task-started`` and ``task-succeeded`` /
``task-failed`` from Celery's own worker. A fast-lane call never meets that machinery, so the
node sends the same events, with the same fields, through the consumer's event dispatcher
(``consumer.event_dispatcher``): the tool's name as the task name (what
``ExecuteTask.shadow_name`` gives the Celery lane), the call's previews as ``args`` / ``kwargs``,
``runtime`` in seconds, the result's repr, the exception's repr. The dispatcher adds
``hostname``, ``timestamp``, ``pid``, ``clock`` and ``utcoffset``.

Nothing is built or sent unless the dispatcher sends task events (``task_events = true``, or
``-E``, or ``enable_events`` by remote control).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from celery.utils.saferepr import saferepr

from ..call import Call
from ..execute_task import call_preview

log = logging.getLogger("snakepit_tasks.node")

#: Longest result repr in ``task-succeeded`` (Celery's ``resultrepr_maxsize`` default).
RESULT_PREVIEW = 1024


class TaskEvents:
    """Sends the Celery task events of fast-lane calls through a worker's event dispatcher.

    ``dispatcher`` returns the consumer's current dispatcher (Celery replaces it when the
    broker connection is re-established), or None before the consumer has one.
    """

    def __init__(self, dispatcher: Callable[[], Any]) -> None:
        self._dispatcher = dispatcher

    def active(self) -> Any:
        """The dispatcher when it sends task events now, else None (then send nothing)."""
        try:
            dispatcher = self._dispatcher()
        except Exception:
            return None
        if dispatcher is None or not dispatcher.enabled:
            return None
        groups = dispatcher.groups
        if groups and "task" not in groups:
            return None
        return dispatcher

    def received(self, dispatcher: Any, call_id: str, call: Call) -> None:
        """``task-received``: the node took the call from its list."""
        _send(dispatcher, "task-received", uuid=call_id, name=call.command, args="()",
              kwargs=call_preview(call), root_id=call_id, parent_id=None, retries=0, eta=None,
              expires=None)

    def started(self, dispatcher: Any, call_id: str) -> None:
        """``task-started``: the call is handed to the node's runner."""
        _send(dispatcher, "task-started", uuid=call_id)

    def succeeded(self, dispatcher: Any, call_id: str, result: Any, runtime: float) -> None:
        """``task-succeeded`` with the result's repr and the runtime (seconds)."""
        _send(dispatcher, "task-succeeded", uuid=call_id,
              result=saferepr(result, RESULT_PREVIEW), runtime=runtime)

    def failed(self, dispatcher: Any, call_id: str, exc: BaseException) -> None:
        """``task-failed`` with the exception's repr and its one-line description."""
        _send(dispatcher, "task-failed", uuid=call_id, exception=saferepr(exc),
              traceback="".join(traceback.format_exception_only(type(exc), exc)))

    def rejected(self, dispatcher: Any, call_id: str) -> None:
        """``task-rejected`` (requeued): a stopping node handed the call back unstarted."""
        _send(dispatcher, "task-rejected", uuid=call_id, requeue=True)


def _send(dispatcher: Any, kind: str, **fields: Any) -> None:
    try:
        dispatcher.send(kind, **fields)
    except Exception:  # an event never fails a call
        log.debug("could not send %s", kind, exc_info=True)
