"""Adapters used only by the integration tests (imported by runtimes through adapter_env)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Generator
from typing import Any

from adapters.showcase import ShowcaseAdapter
from snakepit_tasks.bridge import BaseAdapter, ThreadSafeAdapter, tool


class WhoAmIAdapter(BaseAdapter):
    """One tool that names the adapter and the process serving it."""

    @tool(description="Report this adapter, process and worker")
    def whoami(self) -> dict[str, Any]:
        return {
            "adapter": "whoami",
            "pid": os.getpid(),
            "worker_id": self.session_context.worker_id,
        }


def _record_run(path: str, call_id: str, tag: Any) -> None:
    """Append one line per run, ``<call id> <tag>``: O_APPEND writes this small are atomic, so
    runs in several processes at once never mix their lines."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{call_id} {tag}\n".encode())
    finally:
        os.close(fd)


class RecordingAdapter(ShowcaseAdapter):
    """The showcase tools plus tools that record every run (the call's id and ``value``, one
    line each, in the file ``runs``) before they do anything: a test counts how often each
    call ran, and finds the runs of a call whose id it never learnt by its ``value``."""

    @tool(description="Record this run, sleep, then return the value (not idempotent)")
    def record(self, runs: str, value: Any = None, seconds: float = 0.0) -> dict[str, Any]:
        call_id = self.session_context.call_id
        _record_run(runs, call_id, value)
        if seconds:
            time.sleep(float(seconds))
        return {"call_id": call_id, "value": value, "pid": os.getpid(),
                "worker_id": self.session_context.worker_id,
                "session_id": self.session_context.session_id}

    @tool(description="Stay busy until the file `flag` exists (at most `limit` seconds)")
    def hold(self, flag: str, limit: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + float(limit)
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.02)
        return {"released": os.path.exists(flag), "pid": os.getpid(),
                "worker_id": self.session_context.worker_id}

    @tool(description="Record this run, then yield n chunks (not idempotent)",
          supports_streaming=True)
    def record_stream(
        self, runs: str, value: Any = None, n: int = 3, delay: float = 0.0
    ) -> Generator[dict[str, Any], None, dict[str, Any]]:
        call_id = self.session_context.call_id
        _record_run(runs, call_id, value)
        for i in range(1, int(n) + 1):
            if delay:
                time.sleep(float(delay))
            yield {"i": i}
        return {"call_id": call_id, "value": value, "count": int(n), "pid": os.getpid()}


class BridgeAdapter(ThreadSafeAdapter):
    """Tools that call host tools every way an adapter can (the tool bridge tests)."""

    def _reply(self, value: Any) -> dict[str, Any]:
        return {"value": value, "pid": os.getpid(), "worker_id": self.session_context.worker_id}

    @tool(description="Call a host tool: style dict, kwargs or proxy")
    def call_host(self, name: str, args: dict[str, Any] | None = None,
                  style: str = "dict") -> dict[str, Any]:
        ctx = self.session_context
        if style == "kwargs":
            return self._reply(ctx.call_host_tool(name, **(args or {})))
        if style == "proxy":
            return self._reply(ctx.host_tools[name](**(args or {})))
        return self._reply(ctx.call_host_tool(name, args or {}))

    @tool(description="Call a host tool and report what the adapter saw")
    def try_host(self, name: str, args: dict[str, Any] | None = None,
                 unencodable: bool = False) -> dict[str, Any]:
        call_args: dict[str, Any] = dict(args or {})
        if unencodable:
            call_args["thing"] = object()
        try:
            value = self.session_context.call_host_tool(name, call_args)
        except Exception as exc:
            details = getattr(exc, "details", {})
            return {
                "ok": False,
                "class": type(exc).__name__,
                "bases": [c.__name__ for c in type(exc).__mro__],
                "message": str(exc),
                "type": getattr(exc, "type", ""),
                "available": details.get("available"),
                "traceback": details.get("traceback", ""),
                "pid": os.getpid(),
            }
        return {"ok": True, "value": value, "pid": os.getpid()}

    @tool(description="The host tools this call sees")
    def list_host(self) -> dict[str, Any]:
        ctx = self.session_context
        specs = ctx.list_host_tools()
        return {
            "tools": [dataclasses.asdict(s) for s in specs],
            "names": list(ctx.host_tools),
            "has_calculate_hash": "calculate_hash" in ctx.host_tools,
        }

    @tool(description="Stream n chunks, each from a host tool call", supports_streaming=True)
    def stream_host(
        self, name: str, n: int = 3
    ) -> Generator[dict[str, Any], None, dict[str, Any]]:
        for i in range(int(n)):
            yield {"i": i, "value": self.session_context.call_host_tool(name, {"i": i})}
        return {"count": int(n), "pid": os.getpid()}

    @tool(description="Timings of n host-tool calls, measured in the adapter (seconds)")
    def time_host(self, name: str, n: int = 100) -> list[float]:
        ctx = self.session_context
        times = []
        for i in range(int(n)):
            started = time.perf_counter()
            ctx.call_host_tool(name, {"i": i})
            times.append(time.perf_counter() - started)
        return times
