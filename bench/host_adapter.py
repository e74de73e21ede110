"""A bench-only adapter for the tool bridge: the showcase tools plus ``time_host``, which times
host-tool calls from inside the adapter; and ``echo``, a global host tool (run in the node)."""

from __future__ import annotations

import time
from typing import Any

from adapters.showcase import ShowcaseAdapter
from snakepit_tasks.bridge import tool


class HostBenchAdapter(ShowcaseAdapter):
    """Every showcase tool (``ping`` among them), and ``time_host``."""

    @tool(description="Seconds each of n sequential calls of host tool `name` took, here")
    def time_host(self, name: str, n: int = 100) -> list[float]:
        call = self.session_context.call_host_tool
        perf = time.perf_counter
        times = []
        for i in range(int(n)):
            started = perf()
            answer = call(name, {"i": i})
            times.append(perf() - started)
            if answer != {"i": i}:
                raise RuntimeError(f"host tool {name!r} answered {answer!r} to call {i}")
        return times


def echo(**kwargs: Any) -> dict[str, Any]:
    """Return the arguments (a global host tool: it runs in the node)"""
    return kwargs
