"""The Celery task callers send: ``snakepit.execute``.

``from snakepit_tasks.tasks import execute`` gives the task of the process-wide app, for the
web-app idiom ``execute.delay("ping", {})`` and for canvas (``group``, ``chain`` with
immutable signatures ``execute.si(...)``).
"""

from __future__ import annotations

import time
from typing import Any

from celery import Task
from celery.result import AsyncResult
from kombu.exceptions import EncodeError

from . import routing
from .errors import ConfigurationError, SerializationError, SnakepitError

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
    ) -> Any:
        node = getattr(self.app, "snakepit_node", None)
        if node is None:
            raise ConfigurationError(
                "snakepit.execute ran outside a snakepit node; start nodes with "
                "`snakepit-tasks worker` (task_always_eager is not supported)"
            )
        if pool and pool != node.pool.name:
            raise ConfigurationError(
                f"a call for pool {pool!r} reached node {node.name} of pool {node.pool.name!r}"
            )
        if deadline is None:
            deadline = time.time() + (timeout or node.settings.default_command_timeout / 1000)
        call = node.call_stream if stream else node.call
        return call(
            command,
            args or {},
            deadline=deadline,
            call_id=self.request.id or "",
            session_id=session_id or "",
        )

    def apply_async(
        self, args: Any = None, kwargs: Any = None, **options: Any
    ) -> AsyncResult:
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
