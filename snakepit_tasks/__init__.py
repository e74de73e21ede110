"""snakepit-tasks: a process pooler and session manager for Python adapters, on Celery + Redis.

    import snakepit_tasks as sp
    sp.execute("ping")
"""

from . import errors, sessions
from .app import configure, create_app, default_app
from .caller import (
    await_ready,
    execute,
    execute_async,
    execute_in_session,
    execute_in_session_async,
    get_result,
    get_stats,
    list_workers,
    wait,
)
from .config import PoolConfig, Settings, load_settings
from .errors import SnakepitError
from .script import cleanup, run_as_script, start_pools
from .streaming.api import (
    HALT,
    Stream,
    execute_in_session_stream,
    execute_stream,
    stream,
    stream_in_session,
    stream_result,
)

__version__ = "0.1.0"

__all__ = [
    "HALT",
    "Stream",
    "execute_stream",
    "execute_in_session_stream",
    "stream_in_session",
    "stream",
    "stream_result",
    "PoolConfig",
    "Settings",
    "SnakepitError",
    "await_ready",
    "cleanup",
    "run_as_script",
    "start_pools",
    "configure",
    "create_app",
    "default_app",
    "errors",
    "execute",
    "execute_async",
    "execute_in_session",
    "execute_in_session_async",
    "sessions",
    "get_result",
    "get_stats",
    "list_workers",
    "load_settings",
    "wait",
]
