"""Concurrency: many calls at once spread over the pool's workers (threads, execute_batch,
and a Celery group of immutable signatures).

    python examples/concurrency.py
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from _common import say, use_pool
from celery import group

import snakepit_tasks as sp
from snakepit_tasks.resilience import execute_batch

WORKERS = 3


def main() -> None:
    say("workers", sp.list_workers())
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=WORKERS * 2) as threads:
        results = list(threads.map(lambda _: sp.execute("sleep", {"seconds": 0.3}), range(6)))
    spread = Counter(r["worker_id"] for r in results)
    say(f"6 x sleep(0.3) from 6 threads in {time.monotonic() - started:.2f} s", dict(spread))

    sums = execute_batch([lambda i=i: sp.execute("add", {"a": i, "b": i}) for i in range(10)],
                         max_concurrency=4)
    say("execute_batch of 10 adds, 4 at a time", sums)

    from snakepit_tasks.tasks import execute

    job = group(execute.si("add", {"a": i, "b": 100}) for i in range(5))
    say("celery group of 5 adds", job.apply_async().get(timeout=60))
    say("stats", {k: v for k, v in sp.get_stats().items()
                  if k in ("workers", "requests", "errors")})


if __name__ == "__main__":
    use_pool(pool_size=WORKERS)
    sp.run_as_script(main, exit_mode="stop")
