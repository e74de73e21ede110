"""Adapters used only by the integration tests (imported by runtimes through adapter_env)."""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from typing import Any

from adapters.showcase import ShowcaseAdapter
from snakepit_tasks.bridge import BaseAdapter, tool


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
