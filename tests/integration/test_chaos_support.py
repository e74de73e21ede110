"""Shared pieces of the chaos tests (test_chaos_*.py): a node factory with a private data dir
that checks, after every test, that no adapter runtime of the test is still alive, and small
bounded waits on what nodes publish in Redis. Holds no tests."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import NodeHandle, ProcessTracker, start_time, wait_until

from snakepit_tasks import connections, errors, keys

RUNTIME = "snakepit_tasks.bridge.runtime"


def dead(pid: int) -> bool:
    """Gone, or a zombie (state Z) only waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return True
    return "\nState:\tZ" in status or "\nState:\tX" in status


def runtimes_left(tracker: ProcessTracker, extra: dict[int, int | None]) -> dict[int, str]:
    """Adapter runtimes seen during the test (tracker + ``extra``) that still run."""
    left = {pid: cmd for pid, cmd in tracker.alive().items() if RUNTIME in cmd}
    for pid, started in extra.items():
        if started is not None and start_time(pid) == started and not dead(pid):
            left.setdefault(pid, "(recorded by the test)")
    return left


def chaos_nodes(
    node: Callable[..., NodeHandle], pids: ProcessTracker, tmp_path: Path
) -> Iterator[Callable[..., NodeHandle]]:
    """Body of each chaos module's ``chaos_node`` fixture: the conftest ``node(...)`` factory
    with a private SNAKEPIT_DATA_DIR (overridable through ``env``); ``.remember(pid)`` adds a
    runtime pid to check. At teardown: stops the nodes, then fails (after SIGKILLing them)
    if any adapter runtime seen during the test is still alive; a zombie counts as gone."""
    data_dir = tmp_path / "snakepit-data"
    started: list[NodeHandle] = []
    extra: dict[int, int | None] = {}

    def start(*, env: dict[str, str] | None = None, **kwargs: Any) -> NodeHandle:
        handle = node(env={"SNAKEPIT_DATA_DIR": str(data_dir), **(env or {})}, **kwargs)
        started.append(handle)
        if handle.app is not None:
            for pid in handle.worker_pids():
                extra[pid] = start_time(pid)
        return handle

    def remember(pid: int) -> None:
        extra.setdefault(pid, start_time(pid))

    start.remember = remember  # type: ignore[attr-defined]
    yield start
    for handle in reversed(started):
        handle.stop()
    pids.sample()
    try:
        wait_until(lambda: not runtimes_left(pids, extra), timeout=15,
                   message=lambda: f"no runtime left: {runtimes_left(pids, extra)}")
    except AssertionError:
        left = runtimes_left(pids, extra)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        pytest.fail(f"adapter runtimes alive after the test (now killed): {left}")


def redis_of(n: NodeHandle) -> Any:
    return connections.redis_client(n.redis_url)


def busy_workers(n: NodeHandle) -> dict[str, int]:
    raw = redis_of(n).hgetall(keys.busy(n.name))
    return {connections.text(k): int(v) for k, v in raw.items() if int(v) > 0}


def wait_busy(n: NodeHandle, at_least: int = 1, timeout: float = 30.0) -> str:
    """The id of a worker of ``n`` with at least ``at_least`` calls in flight."""
    found: list[str] = []

    def check() -> bool:
        found[:] = [w for w, c in busy_workers(n).items() if c >= at_least]
        return bool(found)

    wait_until(check, timeout=timeout, message=f"{at_least} call(s) in flight on {n.name}")
    return found[0]


def snapshot(n: NodeHandle, worker_id: str) -> dict[str, Any]:
    """The published snapshot of one worker (pid, state, generation, ...)."""
    for w in n.workers():
        if w["id"] == worker_id:
            return w
    raise AssertionError(f"worker {worker_id} not published by {n.name}")


def ready_pid(n: NodeHandle, worker_id: str) -> int | None:
    w = snapshot(n, worker_id)
    return int(w["pid"]) if w["state"] == "ready" and w["pid"] else None


def wait_replaced(n: NodeHandle, worker_id: str, old_pid: int, timeout: float = 30.0) -> int:
    """Wait until ``worker_id`` is ready again with a pid other than ``old_pid``; that pid."""
    def check() -> int | None:
        pid = ready_pid(n, worker_id)
        return pid if pid is not None and pid != old_pid else None

    return int(wait_until(check, timeout=timeout,
                          message=lambda: f"{worker_id} restarted: {n.workers()}"))


def outcome(call: Any, timeout: float = 90.0) -> Any:
    """The result of an AsyncResult, or the snakepit error it ended with."""
    try:
        return call.get(timeout=timeout)
    except errors.SnakepitError as exc:
        return exc


def start_serving(
    chaos_node: Callable[..., NodeHandle], app: Any, pool_size: int, timeout: float = 60.0,
    **kwargs: Any,
) -> NodeHandle:
    """Start a node through ``chaos_node`` without reconfiguring the process-wide app (the
    ``node`` factory's ``make_app`` would close the app that calls in flight still use):
    wait until its ``pool_size`` workers are published, remember their pids, hand it ``app``."""
    handle = chaos_node(wait=False, pool_size=pool_size, **kwargs)
    wait_until(lambda: len(handle.worker_pids()) == pool_size, timeout=timeout,
               message=lambda: f"{pool_size} ready workers on {handle.name}: "
                               f"{handle.output()[-2000:]}")
    for pid in handle.worker_pids():
        chaos_node.remember(pid)  # type: ignore[attr-defined]
    handle.app = app
    return handle
