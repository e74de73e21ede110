"""Thread profile: one adapter process serves several calls at once on its threads.

    python examples/thread_profile.py
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from _common import say, use_pool

import snakepit_tasks as sp

THREADS = 4


def main() -> None:
    say("workers", sp.list_workers())
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=THREADS) as threads:
        results = list(threads.map(lambda _: sp.execute("sleep", {"seconds": 0.5}),
                                   range(THREADS)))
    elapsed = time.monotonic() - started
    pids = {r["pid"] for r in results}
    say(f"{THREADS} x sleep(0.5) at once", f"{elapsed:.2f} s in {len(pids)} process(es) {pids}")
    assert len(pids) == 1, "one worker process served every call"


if __name__ == "__main__":
    use_pool(pool_size=1, worker_profile="thread", threads_per_worker=THREADS)
    sp.run_as_script(main, exit_mode="stop")
