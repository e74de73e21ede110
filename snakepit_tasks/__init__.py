"""snakepit-tasks: a process pooler and session manager for Python adapters, on Celery + Redis.

    import snakepit_tasks as sp
    sp.execute("ping")

Names are imported on first use, so an adapter process (which only needs
``snakepit_tasks.bridge``) starts without loading Celery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "errors": "snakepit_tasks.errors",
    "sessions": "snakepit_tasks.sessions",
    "serialization": "snakepit_tasks.serialization",
    "hardware": "snakepit_tasks.hardware",
    "HostToolSpec": "snakepit_tasks.host_tools.spec",
    "host_tool": "snakepit_tasks.host_tools.api",
    "list_host_tools": "snakepit_tasks.host_tools.api",
    "register_host_tool": "snakepit_tasks.host_tools.api",
    "unregister_host_tool": "snakepit_tasks.host_tools.api",
    "SnakepitError": "snakepit_tasks.errors",
    "PoolConfig": "snakepit_tasks.config",
    "Settings": "snakepit_tasks.config",
    "load_settings": "snakepit_tasks.config",
    "configure": "snakepit_tasks.app",
    "create_app": "snakepit_tasks.app",
    "default_app": "snakepit_tasks.app",
    "await_ready": "snakepit_tasks.caller",
    "execute": "snakepit_tasks.caller",
    "execute_async": "snakepit_tasks.caller",
    "execute_in_session": "snakepit_tasks.caller",
    "execute_in_session_async": "snakepit_tasks.caller",
    "get_result": "snakepit_tasks.caller",
    "get_stats": "snakepit_tasks.caller",
    "list_workers": "snakepit_tasks.caller",
    "wait": "snakepit_tasks.caller",
    "HALT": "snakepit_tasks.streaming.api",
    "Stream": "snakepit_tasks.streaming.api",
    "execute_stream": "snakepit_tasks.streaming.api",
    "execute_in_session_stream": "snakepit_tasks.streaming.api",
    "stream": "snakepit_tasks.streaming.api",
    "stream_in_session": "snakepit_tasks.streaming.api",
    "stream_result": "snakepit_tasks.streaming.api",
    "executor": "snakepit_tasks.resilience.executor",
    "CircuitBreaker": "snakepit_tasks.resilience",
    "HealthMonitor": "snakepit_tasks.resilience",
    "RetryPolicy": "snakepit_tasks.resilience",
    "cleanup": "snakepit_tasks.local_pools",
    "run_as_script": "snakepit_tasks.local_pools",
    "start_pools": "snakepit_tasks.local_pools",
}

__all__ = [
    "CircuitBreaker",
    "HALT",
    "HealthMonitor",
    "HostToolSpec",
    "PoolConfig",
    "RetryPolicy",
    "Settings",
    "SnakepitError",
    "Stream",
    "await_ready",
    "cleanup",
    "configure",
    "create_app",
    "default_app",
    "errors",
    "execute",
    "execute_async",
    "execute_in_session",
    "execute_in_session_async",
    "execute_in_session_stream",
    "execute_stream",
    "executor",
    "get_result",
    "get_stats",
    "hardware",
    "host_tool",
    "list_host_tools",
    "list_workers",
    "load_settings",
    "register_host_tool",
    "run_as_script",
    "serialization",
    "sessions",
    "start_pools",
    "stream",
    "stream_in_session",
    "stream_result",
    "unregister_host_tool",
    "wait",
]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'snakepit_tasks' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name.endswith("." + name) else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from . import errors, hardware, serialization, sessions
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
    from .host_tools.api import (
        host_tool,
        list_host_tools,
        register_host_tool,
        unregister_host_tool,
    )
    from .host_tools.spec import HostToolSpec
    from .local_pools import cleanup, run_as_script, start_pools
    from .resilience import CircuitBreaker, HealthMonitor, RetryPolicy, executor
    from .streaming.api import (
        HALT,
        Stream,
        execute_in_session_stream,
        execute_stream,
        stream,
        stream_in_session,
        stream_result,
    )
