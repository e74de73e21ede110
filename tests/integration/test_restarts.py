"""Restart intensity of a node's workers (worker_starter_max_restarts / _max_seconds), with
real adapter runtimes in this process (no Redis, no Celery): a worker that crashes on every
call is restarted at once a few times, then after a pause, and never given up on."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import pool_table, unique_pool, wait_until

from snakepit_tasks import errors
from snakepit_tasks.config import load_settings
from snakepit_tasks.node.workerset import WorkerGone, WorkerSet

pytestmark = pytest.mark.timeout(120)

MAX_SECONDS = 8


@pytest.fixture
def workerset(pids: Any, tmp_path: Path) -> Iterator[WorkerSet]:
    pool = unique_pool()
    settings = load_settings(
        pools=[pool_table(pool, pool_size=1)], data_dir=str(tmp_path / "data"),
        worker_starter_max_restarts=1, worker_starter_max_seconds=MAX_SECONDS,
        crash_barrier_backoff_ms=(10,), heartbeat_enabled=False,
    )
    ws = WorkerSet(settings, settings.pool(pool), f"{pool}@itest", run_id="restarts01")
    ws.start()
    try:
        yield ws
    finally:
        for w in ws.workers:
            if w.pid:
                pids.record(w.pid)
        ws.stop(grace=2.0)


def crash(ws: WorkerSet, pids: Any) -> int:
    """Crash the (only) worker with a call; the pid that crashed. A slot handed out in the
    moment before the exit watcher saw the previous crash is found dead (WorkerGone: the call
    never reached a process) and taken again, as the node does."""
    deadline = time.time() + 60
    while True:
        slot = ws.acquire(deadline)
        assert slot.pid is not None
        pids.record(slot.pid)
        try:
            ws.calls.execute(slot, "crash", {"code": 1}, deadline=time.time() + 30)
        except WorkerGone:
            time.sleep(0.05)
            continue
        except errors.WorkerCrashed:
            return slot.pid
        finally:
            ws.release(slot)
        raise AssertionError("the crash tool returned")


def test_a_worker_crashing_over_and_over_is_restarted_after_a_pause(
    workerset: WorkerSet, pids: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="snakepit_tasks.node")
    (worker,) = workerset.workers
    crashed = [crash(workerset, pids), crash(workerset, pids)]  # two restarts at once
    crashed.append(crash(workerset, pids))  # more than 1 within 8 s: this one waits
    crashed_at = time.monotonic()

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "worker_starter_max" in r.getMessage()]

    (message,) = wait_until(warnings, timeout=30, message="the restart-intensity warning")
    assert worker.worker_id in message
    assert "worker_starter_max_restarts" in message and "worker_starter_max_seconds" in message
    assert worker.state == "dead"  # not handed out while it waits

    slot = workerset.acquire(time.time() + 60)  # blocks until the paused restart is done
    waited = time.monotonic() - crashed_at
    try:
        pong = workerset.calls.execute(slot, "ping", {}, deadline=time.time() + 30)
    finally:
        workerset.release(slot)
    assert slot.pid is not None
    pids.record(slot.pid)
    assert pong["pid"] == slot.pid and pong["pid"] not in crashed  # a real, new runtime
    assert waited >= MAX_SECONDS / 2, f"restarted {waited:.1f}s after the crash"
    assert len(warnings()) == 1
