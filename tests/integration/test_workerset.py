"""snakepit_tasks.node.workerset in this process, with real adapter runtimes (no Celery):
what a node does right after it replaced a worker."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import data_dir, pool_table, unique_pool

from snakepit_tasks import errors
from snakepit_tasks.config import load_settings

pytestmark = pytest.mark.timeout(120)


ROUNDS = 6


@pytest.fixture
def workerset(redis_url: str, pids: Any) -> Iterator[Any]:
    from snakepit_tasks.node.workerset import WorkerSet

    pool = unique_pool()
    settings = load_settings(
        redis_url=redis_url, pools=[pool_table(pool, pool_size=1)], data_dir=data_dir()
    )
    ws = WorkerSet(settings, settings.pool(pool), f"{pool}@itest", count=1, run_id="itest01")
    ws.start()
    try:
        yield ws
    finally:
        for w in ws.workers:
            if w.pid:
                pids.record(w.pid)
        ws.stop(grace=2.0)


def _run(ws: Any, command: str, args: dict[str, Any], seconds: float) -> Any:
    slot = ws.acquire(time.time() + 30)
    try:
        return ws.calls.execute(slot, command, args, deadline=time.time() + seconds)
    finally:
        ws.release(slot)


def test_call_right_after_a_timeout_is_not_a_closed_channel_error(workerset, pids):
    """The window is a race (the exit watcher usually wins a fraction of the time), so the
    sequence is repeated: with the bug, one of the rounds meets the closed channel."""
    from snakepit_tasks.node.workerset import WorkerGone

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(30.0)  # the next call follows at once, as a busy node's would
    try:
        for _ in range(ROUNDS):
            before = workerset.workers[0].pid
            pids.record(before)
            with pytest.raises(errors.ExecutionTimeout):
                _run(workerset, "sleep", {"seconds": 5}, 1.0)
            try:
                pong = _run(workerset, "ping", {}, 30.0)
            except (WorkerGone, errors.SnakepitError):
                continue  # acceptable: the node hands the call on / reports it
            assert pong["status"] == "pong" and pong["pid"] != before
    finally:
        sys.setswitchinterval(old_interval)
