"""A bench-only adapter: the showcase tools plus ``timed``, whose chunks carry their yield time.

Served by the bench's second snakepit pool and by a raw gRPC runtime, so the streaming figures
compare the same tool code on both paths. The showcase adapter itself is left unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

from adapters.showcase import ShowcaseAdapter
from snakepit_tasks.bridge import tool


class TimedStreamAdapter(ShowcaseAdapter):
    """Every showcase tool (``stream_count`` among them), and ``timed``."""

    @tool(
        description="Yield n chunks {i, t: time.time() at the yield}, delay s apart",
        supports_streaming=True,
    )
    def timed(
        self, n: int = 100, delay: float = 0.0
    ) -> Generator[dict[str, Any], None, dict[str, Any]]:
        pause = float(delay)
        for i in range(1, int(n) + 1):
            if pause and i > 1:  # the first chunk at once: call → chunk 1 is the call's set-up
                time.sleep(pause)
            yield {"i": i, "t": time.time()}
        return {"count": int(n)}
