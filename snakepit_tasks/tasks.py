"""The Celery task callers send: ``snakepit.execute``.

``from snakepit_tasks.tasks import execute`` gives the task of the process-wide app, for the
web-app idiom ``execute.delay("ping", {})`` and for canvas (``group``, ``chain`` with
immutable signatures ``execute.si(...)``).
"""

from __future__ import annotations

import time
from typing import Any

from celery import Task
from celery.exceptions import Reject
from celery.result import AsyncResult
from kombu.exceptions import EncodeError

from . import keys, routing
from .app import declare_queue
from .errors import ConfigurationError, SerializationError, SnakepitError
from .node.node import Redirect
from .node.workerset import NodeDraining
from .state import redis_errors_as_snakepit

EXECUTE = "snakepit.execute"


class ExecuteTask(Task):
    """Runs one tool call on a worker of the node that receives it."""

    name = EXECUTE
    acks_late = True
    throws = (SnakepitError,)  # expected failures: logged without a traceback

    def run(
        self,
        command: str,
        args: dict[str, Any] | None = None,
        pool: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        session_id: str | None = None,
        stream: bool = False,
        affinity: str | None = None,
        worker: str | None = None,
        fallback: bool = False,
        enqueued_at: float | None = None,
        reply: bool = False,
    ) -> Any:
        node = getattr(self.app, "snakepit_node", None)
        if node is None:
            raise ConfigurationError(
                "snakepit.execute ran outside a snakepit node; start nodes with "
                "`snakepit-tasks worker` (task_always_eager is not supported)"
            )
        if pool and pool != node.pool.name:
            misrouted = ConfigurationError(
                f"a call for pool {pool!r} reached node {node.name} of pool {node.pool.name!r}"
            )
            if reply:
                node.reply_failure(self.request.id or "", misrouted)
            raise misrouted
        if deadline is None:
            deadline = time.time() + (timeout or node.settings.default_command_timeout / 1000)
        try:
            return node.run(
                command,
                args or {},
                deadline=deadline,
                call_id=self.request.id or "",
                session_id=session_id or "",
                worker=worker,
                affinity=affinity,
                fallback=fallback,
                enqueued_at=enqueued_at,
                stream=stream,
                reply=reply,
            )
        except NodeDraining:
            # Not started and this node is stopping: back to the queue for another node (a
            # pinned call's queue is then handled by the janitor once this node is gone).
            raise Reject(
                "node shutting down; the call goes back to its queue", requeue=True
            ) from None
        except Redirect as moved:
            # Lost a race to bind the session: send the call to the session's worker, under
            # the same task id so the caller's AsyncResult still answers.
            kwargs = dict(self.request.kwargs, worker=moved.worker_id, fallback=False)
            raise self.replace(
                self.signature(
                    (), kwargs, queue=declare_queue(keys.node_queue(moved.node)), immutable=True
                )
            ) from None

    def apply_async(
        self, args: Any = None, kwargs: Any = None, **options: Any
    ) -> AsyncResult:
        with redis_errors_as_snakepit("sending the call"):
            call = routing.prepare(self.app.snakepit_settings, args, kwargs)
            options.setdefault("queue", call.queue)
            try:
                return super().apply_async((), call.kwargs, **options)
            except EncodeError as exc:
                raise SerializationError(f"the call could not be encoded: {exc}") from None


def __getattr__(name: str) -> Any:
    # ``execute`` is the default app's task, built on first use rather than at import.
    if name == "execute":
        from .app import default_app

        return default_app().tasks[EXECUTE]
    raise AttributeError(name)
