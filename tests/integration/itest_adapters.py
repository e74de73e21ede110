"""Adapters used only by the integration tests (imported by runtimes through adapter_env)."""

from __future__ import annotations

import os
from typing import Any

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
