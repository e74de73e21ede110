"""snakepit_tasks.node.heartbeat with real adapter runtimes (no Redis, no node): a hung
(SIGSTOPped) worker is killed once ``heartbeat_max_missed`` pings in a row went unanswered for
``heartbeat_timeout_ms`` each, and it never holds up the pings of the other workers.

Only generous bounds are asserted: "not killed before" bounds hold however slow the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import SHOWCASE, wait_until

from snakepit_tasks.config import load_settings
from snakepit_tasks.node.heartbeat import Heartbeats
from snakepit_tasks.node.worker import AdapterWorker, worker_env

pytestmark = pytest.mark.timeout(120)

Beats = list[tuple[str, float]]


@pytest.fixture
def heartbeats(pids: Any) -> Iterator[Callable[..., tuple[list[AdapterWorker], Beats]]]:
    """``heartbeats(count, **settings)``: ``count`` ready runtimes pinged by a started
    Heartbeats; returns them and the (worker id, time) of every answered ping."""
    run_dir = tempfile.mkdtemp(prefix="sp-", dir="/tmp")  # short: socket paths are limited
    started: list[AdapterWorker] = []
    beaters: list[Heartbeats] = []

    def start(count: int, **settings: Any) -> tuple[list[AdapterWorker], Beats]:
        env = worker_env(dict(os.environ), "process", {})
        workers = [
            AdapterWorker(f"hb@itest/{i}", i, SHOWCASE, 1, run_dir, "hb-run", "itest", env)
            for i in range(count)
        ]
        for w in workers:
            w.spawn()
            started.append(w)
            assert w.pid is not None
            pids.record(w.pid)
        for w in workers:
            w.wait_ready(30)
        beats: Beats = []
        beater = Heartbeats(
            load_settings(**settings), workers,
            lambda w: beats.append((w.worker_id, time.monotonic())),
        )
        beater.start()
        beaters.append(beater)
        return workers, beats

    try:
        yield start
    finally:
        for beater in beaters:
            beater.stop()
        for w in started:
            w.signal_group(signal.SIGCONT)  # a stopped process would sit out its SIGTERM
            w.stop(2.0)
        shutil.rmtree(run_dir, ignore_errors=True)


def ended(worker: AdapterWorker) -> bool:
    return worker.process is not None and worker.process.poll() is not None


def test_a_ping_may_go_unanswered_for_heartbeat_timeout_ms(heartbeats: Any) -> None:
    (hung, healthy), beats = heartbeats(
        2, heartbeat_ping_interval_ms=200, heartbeat_timeout_ms=3000, heartbeat_max_missed=2
    )
    wait_until(lambda: {w for w, _ in beats} == {hung.worker_id, healthy.worker_id},
               timeout=15, message="both workers answering pings")
    assert hung.pid is not None
    os.kill(hung.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    # Each ping may take 3 s: two misses cannot add up before ~6 s, certainly not 2 s.
    while time.monotonic() - stopped_at < 2.0:
        assert not ended(hung), "killed before a single ping could time out"
        time.sleep(0.1)
    assert hung.kill_reason == ""
    wait_until(lambda: ended(hung), timeout=15, message="the hung worker killed")
    killed_at = time.monotonic()
    assert hung.kill_reason == "missed 2 heartbeats: hung"
    assert hung.exit_status() is not None and hung.exit_status().signal == "SIGKILL"
    # The other worker was pinged all along (every 200 ms), never counted as missing one.
    assert not ended(healthy) and healthy.missed_heartbeats == 0 and healthy.kill_reason == ""
    during = [t for w, t in beats if w == healthy.worker_id and stopped_at < t < killed_at]
    assert len(during) >= 3, f"{len(during)} pings of the healthy worker answered during the hang"


def test_a_short_heartbeat_timeout_finds_a_hang_within_seconds(heartbeats: Any) -> None:
    (hung,), beats = heartbeats(
        1, heartbeat_ping_interval_ms=200, heartbeat_timeout_ms=300, heartbeat_max_missed=2
    )
    wait_until(lambda: beats, timeout=15, message="the worker answering pings")
    assert hung.pid is not None
    os.kill(hung.pid, signal.SIGSTOP)
    wait_until(lambda: ended(hung), timeout=10, message="the hung worker killed")
    assert hung.kill_reason == "missed 2 heartbeats: hung"
