"""The adapter SDK (what adapter authors import) and the runtime that serves adapters."""

from .adapter import (
    BaseAdapter,
    SessionContext,
    ThreadSafeAdapter,
    ToolSpec,
    thread_safe_method,
    tool,
)

__all__ = [
    "BaseAdapter",
    "SessionContext",
    "ThreadSafeAdapter",
    "ToolSpec",
    "thread_safe_method",
    "tool",
]
