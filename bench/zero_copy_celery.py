"""A plain Celery app whose task returns a pyarrow Table pickled through Redis: the baseline
of ``python -m bench.zero_copy``. The worker is ``celery -A bench.zero_copy_celery worker``;
its broker URL and queue come from ``BENCH_RAW_REDIS_URL`` and ``BENCH_RAW_QUEUE``."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from .raw_celery_app import plain_app

TABLE = "bench.zc.table"
DEFAULT_QUEUE = "bench.zc"
_cached: dict[float, Any] = {}


def create_app(redis_url: str, queue: str = DEFAULT_QUEUE) -> Celery:
    """A Celery app on ``redis_url`` that pickles results (tables) through its backend."""
    # Messages stay JSON (a worker accepting pickle refuses to run as root); the result, the
    # table, is pickled through the Redis backend.
    app = plain_app("bench_zc", redis_url, queue, result_serializer="pickle",
                    result_accept_content=["pickle"], worker_concurrency=1, result_expires=600)

    @app.task(name=TABLE, acks_late=True, shared=False)
    def table(mib: float) -> Any:
        """The same table every call (built once), like ``make_table(cache=True)``."""
        if mib not in _cached:
            import numpy as np
            import pyarrow as pa

            _cached.clear()
            _cached[mib] = pa.table({"n": np.arange(int(mib * 2**20) // 8, dtype=np.int64)})
        return _cached[mib]

    return app


app = create_app(
    os.environ.get("BENCH_RAW_REDIS_URL", "redis://127.0.0.1:6379/0"),
    os.environ.get("BENCH_RAW_QUEUE", DEFAULT_QUEUE),
)
