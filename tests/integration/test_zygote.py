"""snakepit_tasks.node.zygote and snakepit_tasks.bridge.zygote, with real adapter runtimes in
this process (no Redis, no Celery): a node's workers are forked by its zygote, die with it,
come back from a new one, and start the plain way when there is no zygote."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import cmdline, pool_table, unique_pool, wait_until

from snakepit_tasks import processes
from snakepit_tasks.config import load_settings
from snakepit_tasks.node import zygote as node_zygote
from snakepit_tasks.node.workerset import WorkerGone, WorkerSet

pytestmark = pytest.mark.timeout(120)


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    return int(raw[raw.rfind(")") + 2 :].split()[1])


@pytest.fixture
def start(pids: Any, tmp_path: Path) -> Iterator[Any]:
    started: list[WorkerSet] = []

    def start(pool_size: int = 3, **settings: Any) -> WorkerSet:
        pool = unique_pool()
        loaded = load_settings(pools=[pool_table(pool, pool_size=pool_size)],
                               data_dir=str(tmp_path / "data"), heartbeat_enabled=False,
                               crash_barrier_backoff_ms=(10,), **settings)
        ws = WorkerSet(loaded, loaded.pool(pool), f"{pool}@itest", run_id=f"z{len(started)}",
                       instance="zygote-test")
        started.append(ws)
        ws.start()
        track(ws)
        return ws

    def track(ws: WorkerSet) -> None:
        """Every process of ``ws`` must be gone after the test: its zygote, and what is below
        it (sampled from now on), or its workers (no zygote)."""
        if ws._zygote is not None and ws._zygote.process is not None:
            pids.record(ws._zygote.process.pid)
            pids.track(ws._zygote.process.pid)
        for w in ws.workers:
            if w.pid:
                pids.record(w.pid)

    start.track = track  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        for ws in started:
            track(ws)
            ws.stop(grace=2.0)


def ping(ws: WorkerSet) -> dict[str, Any]:
    deadline = time.time() + 30
    while True:
        slot = ws.acquire(deadline)
        try:
            return ws.calls.execute(slot, "ping", {}, deadline=time.time() + 10)
        except WorkerGone:
            time.sleep(0.05)  # a slot handed out just before its worker was seen dead
        finally:
            ws.release(slot)


def zygote_pid(ws: WorkerSet) -> int:
    assert ws._zygote is not None and ws._zygote.process is not None
    return ws._zygote.process.pid


def test_workers_are_forked_by_one_zygote_and_read_as_runtimes_in_ps(start: Any) -> None:
    ws = start(pool_size=3)
    zygote = zygote_pid(ws)
    assert parent_of(zygote) == os.getpid()
    assert "snakepit_tasks.bridge.zygote" in cmdline(zygote)
    assert "--instance zygote-test --run-id z0" in cmdline(zygote)
    for w in ws.workers:
        assert w.pid is not None and parent_of(w.pid) == zygote
        shown = cmdline(w.pid)
        assert "-m snakepit_tasks.bridge.runtime --adapter " in shown
        assert f"--worker-id {w.worker_id} " in shown and "--run-id z0" in shown
        assert f"--parent-pid {os.getpid()} " in shown and f"--zygote-pid {zygote}" in shown
        assert processes.process_group(w.pid) == w.pid  # its own process group
    served = {ping(ws)["pid"] for _ in range(6)}
    assert served <= {w.pid for w in ws.workers}
    pids = [zygote, *(w.pid for w in ws.workers)]
    ws.stop(grace=2.0)
    wait_until(lambda: not any(processes.process_start_time(p) for p in pids), timeout=10,
               message="the zygote and its workers gone after stop")


def test_a_killed_zygote_takes_its_workers_and_they_come_back_from_a_new_one(
    start: Any,
) -> None:
    ws = start(pool_size=2)
    old_zygote, old_workers = zygote_pid(ws), [w.pid for w in ws.workers]
    os.kill(old_zygote, signal.SIGKILL)
    wait_until(lambda: not any(processes.process_start_time(p) for p in old_workers),
               timeout=10, message="the workers die with their zygote")
    wait_until(lambda: all(w.state == "ready" and w.pid not in old_workers
                           for w in ws.workers), timeout=30, message="workers restarted")
    start.track(ws)
    assert zygote_pid(ws) != old_zygote
    assert {parent_of(w.pid) for w in ws.workers if w.pid} == {zygote_pid(ws)}
    assert ping(ws)["pid"] in {w.pid for w in ws.workers}


def test_how_a_forked_worker_ended_reaches_the_node(
    start: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    ws = start(pool_size=1)
    [worker] = ws.workers
    with caplog.at_level(logging.WARNING, logger="snakepit_tasks.node"):
        for how, sig in (("killed by SIGKILL", signal.SIGKILL), ("exited with code 0",
                                                                 signal.SIGTERM)):
            old = worker.pid
            assert old is not None
            os.kill(old, sig)
            wait_until(lambda old=old: worker.pid != old and worker.state == "ready",
                       timeout=30, message="the worker restarted")
            assert f"(pid {old}) {how}; restarting it" in caplog.text
    assert ping(ws)["pid"] == worker.pid


def test_spawn_starts_each_worker_in_a_fresh_interpreter(start: Any) -> None:
    ws = start(pool_size=2, worker_start_method="spawn")
    assert ws._zygote is None
    assert {parent_of(w.pid) for w in ws.workers if w.pid} == {os.getpid()}
    assert ping(ws)["status"] == "pong"


def test_without_a_zygote_workers_start_the_plain_way(
    start: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(node_zygote, "ZYGOTE_MODULE", "snakepit_tasks.no_such_module")
    with caplog.at_level(logging.WARNING, logger="snakepit_tasks.node"):
        ws = start(pool_size=2)
    assert {parent_of(w.pid) for w in ws.workers if w.pid} == {os.getpid()}
    assert ping(ws)["status"] == "pong"
    assert "starting it in a fresh interpreter" in caplog.text


def test_an_unknown_start_method_is_a_configuration_error() -> None:
    from snakepit_tasks.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="worker_start_method must be one of fork, spawn"):
        load_settings(worker_start_method="forkserver")


# -- a real node (Celery) ------------------------------------------------------------------
def test_a_node_forks_its_workers_from_the_zygote_it_started_while_booting(node: Any) -> None:
    from snakepit_tasks import caller

    n = node(pool_size=2)
    workers = n.worker_pids()
    [zygote] = {parent_of(pid) for pid in workers}
    assert parent_of(zygote) == n.pid and "snakepit_tasks.bridge.zygote" in cmdline(zygote)
    assert caller.execute("ping", app=n.app)["pid"] in workers


def test_a_sigkilled_node_leaves_neither_zygote_nor_workers(node: Any) -> None:
    n = node(pool_size=2)
    workers = n.worker_pids()
    zygote = parent_of(workers[0])
    os.kill(n.pid, signal.SIGKILL)
    n.proc.wait(10)
    wait_until(lambda: not any(processes.process_start_time(p) for p in [zygote, *workers]),
               timeout=10, message="the zygote and workers die with their node")
