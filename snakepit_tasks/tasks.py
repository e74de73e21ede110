"""The default app's ``snakepit.execute`` task: ``from snakepit_tasks.tasks import execute``.

For the web-app idiom ``execute.delay("ping", {})`` and for canvas (``group``, ``chain`` with
immutable signatures ``execute.si(...)``). Built on first use, not at import.
"""

from __future__ import annotations

from typing import Any

from .app import default_app
from .execute_task import EXECUTE, ExecuteTask

__all__ = ["EXECUTE", "ExecuteTask", "execute"]  # noqa: F822 - built on first use


def __getattr__(name: str) -> Any:
    if name == "execute":
        return default_app().tasks[EXECUTE]
    raise AttributeError(name)
