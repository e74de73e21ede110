"""The showcase adapter: small tools that exercise every path of the pool.

Used by the demo, the examples and the tests.
"""

from __future__ import annotations

import builtins
import os
import signal
import time
from collections.abc import Generator, Iterator
from typing import Any

from snakepit_tasks.bridge import BaseAdapter, tool

# Process-local state: lives as long as this worker process (proves session affinity).
_MEMORY: dict[str, Any] = {}
_CALLS = {"count": 0}


class ShowcaseAdapter(BaseAdapter):
    """Demonstration tools; safe to serve from the thread profile too."""

    __thread_safe__ = True

    def initialize(self) -> None:
        _CALLS["count"] += 1

    @tool(description="Health check: status, worker id and process id")
    def ping(self) -> dict[str, Any]:
        return {
            "status": "pong",
            "worker_id": self.session_context.worker_id,
            "pid": os.getpid(),
            "session_id": self.session_context.session_id,
            "calls": _CALLS["count"],
        }

    @tool(description="Return the arguments unchanged")
    def echo(self, **kwargs: Any) -> dict[str, Any]:
        return kwargs

    @tool(description="Add two numbers")
    def add(self, a: float, b: float) -> float:
        return a + b

    @tool(description="Sleep for a number of seconds, then report the worker", idempotent=True)
    def sleep(self, seconds: float = 0.1) -> dict[str, Any]:
        time.sleep(float(seconds))
        return {"slept": seconds, "pid": os.getpid(), "worker_id": self.session_context.worker_id}

    @tool(description="Stay busy for a number of seconds (not idempotent: never re-run)")
    def spin(self, seconds: float = 1.0) -> dict[str, Any]:
        deadline = time.monotonic() + float(seconds)
        while time.monotonic() < deadline:
            time.sleep(0.01)
        return {"spun": seconds, "pid": os.getpid(), "worker_id": self.session_context.worker_id}

    @tool(description="Raise a builtin exception of the given type")
    def fail(self, message: str = "failure requested", kind: str = "ValueError") -> None:
        exc_type = getattr(builtins, kind, None)
        if not (isinstance(exc_type, type) and issubclass(exc_type, Exception)):
            exc_type = RuntimeError
        raise exc_type(message)

    @tool(description="Kill this worker process (exit code, or a signal name such as SIGKILL)")
    def crash(self, code: int | str = 1) -> None:
        if isinstance(code, str) and code.upper().startswith("SIG"):
            os.kill(os.getpid(), getattr(signal, code.upper()))
            time.sleep(5)
        os._exit(int(code))

    @tool(description="Store a value in this process's memory")
    def remember(self, key: str, value: Any) -> dict[str, Any]:
        _MEMORY[key] = value
        return {"key": key, "pid": os.getpid(), "worker_id": self.session_context.worker_id}

    @tool(description="Read a value stored by remember in this process")
    def recall(self, key: str) -> dict[str, Any]:
        return {
            "key": key,
            "value": _MEMORY.get(key),
            "found": key in _MEMORY,
            "pid": os.getpid(),
            "worker_id": self.session_context.worker_id,
        }

    @tool(description="SHA-256 of data, computed by the host tool calculate_hash")
    def hash_via_host(self, data: str) -> dict[str, Any]:
        # calculate_hash runs wherever it was registered (sp.register_host_tool), or in the
        # node when the pool's configuration names it in host_tools.
        digest = self.session_context.call_host_tool("calculate_hash", {"data": data})
        return {"hash": digest, "pid": os.getpid(), "worker_id": self.session_context.worker_id}

    @tool(description="Yield n chunks, optionally pausing between them", supports_streaming=True)
    def stream_count(
        self, n: int = 5, delay: float = 0.0
    ) -> Generator[dict[str, Any], None, dict[str, Any]]:
        for i in range(1, int(n) + 1):
            if delay:
                time.sleep(float(delay))
            yield {"i": i, "of": n}
        return {"count": int(n), "pid": os.getpid(), "worker_id": self.session_context.worker_id}

    @tool(description="Process a list of items one by one, yielding progress after each",
          supports_streaming=True)
    def batch_process(
        self, items: list[Any], delay: float = 0.0
    ) -> Generator[dict[str, Any], None, dict[str, Any]]:
        total = len(items)
        for done, item in enumerate(items, 1):
            if delay:
                time.sleep(float(delay))
            yield {"done": done, "total": total, "item": item, "result": str(item).upper()}
        return {"processed": total, "pid": os.getpid(), "worker_id": self.session_context.worker_id}

    @tool(description="Yield n chunks, then raise", supports_streaming=True)
    def stream_fail(self, n: int = 2, message: str = "stream broke") -> Iterator[dict[str, Any]]:
        for i in range(1, int(n) + 1):
            yield {"i": i}
        raise RuntimeError(message)

    @tool(description="Yield n chunks, then kill this process", supports_streaming=True)
    def stream_crash(self, n: int = 2) -> Iterator[dict[str, Any]]:
        for i in range(1, int(n) + 1):
            yield {"i": i}
            time.sleep(0.05)
        os._exit(1)

    @tool(description="Yield one chunk of the given size in bytes", supports_streaming=True)
    def stream_blob(self, size: int = 1024) -> Iterator[str]:
        yield "x" * int(size)
