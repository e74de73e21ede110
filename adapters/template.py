"""A starting point for a new adapter (``snakepit-tasks gen adapter NAME`` copies this file).

Point a pool at it with ``adapter = "my_package.my_module:TemplateAdapter"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from snakepit_tasks.bridge import BaseAdapter, tool

# Load expensive things (models, connections) once per worker process, at module level or
# lazily into a module-level cache; a new adapter instance serves each call.
_CACHE: dict[str, Any] = {}


class TemplateAdapter(BaseAdapter):
    """Describe what this adapter serves."""

    def initialize(self) -> None:
        """Runs before each call."""

    def cleanup(self) -> None:
        """Runs after each call, even when the tool raised."""

    @tool(description="Say hello")
    def hello(self, name: str = "world") -> dict[str, Any]:
        return {"message": f"hello, {name}"}

    @tool(description="Count up to n, one chunk at a time", supports_streaming=True)
    def count(self, n: int = 3) -> Iterator[dict[str, Any]]:
        for i in range(1, n + 1):
            yield {"i": i}
