"""Chaos: a hung runtime (SIGSTOP) is found by the node's heartbeats, killed and replaced.

Heartbeats every 300 ms, a ping unanswered for 0.5 s is missed, 3 misses kill: a hang is
declared after a couple of seconds; every wait below is bounded far above that.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_served_by, wait_until

import snakepit_tasks as sp
from snakepit_tasks import errors

from .test_chaos_support import chaos_nodes, dead, ready_pid, wait_busy, wait_replaced

pytestmark = pytest.mark.timeout(120)

FAST_HEARTBEAT = {"SNAKEPIT_HEARTBEAT_PING_INTERVAL_MS": "300",
                  "SNAKEPIT_HEARTBEAT_TIMEOUT_MS": "500"}


@pytest.fixture
def chaos_node(node: Any, pids: Any, tmp_path: Path) -> Iterator[Any]:
    yield from chaos_nodes(node, pids, tmp_path)


def resume_if_alive(pid: int) -> None:
    """Teardown safety: a stopped process left behind would ignore SIGTERM for ever."""
    if not dead(pid):
        try:
            os.kill(pid, signal.SIGCONT)
        except OSError:
            pass


@pytest.mark.parametrize(
    "tool, args, env",
    [
        # sleep is idempotent: forbid the re-run so the caller sees the crash itself
        ("sleep", {"seconds": 5}, {"SNAKEPIT_CRASH_BARRIER_MAX_RESTARTS": "0"}),
        ("spin", {"seconds": 5}, {}),  # not idempotent: never re-run
    ],
    ids=["sleep-no-rerun", "spin"],
)
def test_a_hung_runtime_fails_its_call_by_heartbeat_and_is_replaced(
    chaos_node: Any, tool: str, args: dict[str, Any], env: dict[str, str]
) -> None:
    n = chaos_node(pool_size=1, env={**FAST_HEARTBEAT, **env})
    (worker_id,) = n.worker_ids()
    (old_pid,) = n.worker_pids()
    call = sp.execute_async(tool, args, app=n.app)
    assert wait_busy(n) == worker_id
    try:
        os.kill(old_pid, signal.SIGSTOP)
        with pytest.raises(errors.WorkerCrashed) as info:
            call.get(timeout=60)
        message = str(info.value)
        details = info.value.details
        assert "heartbeat" in message, message
        assert "heartbeat" in details["reason"], details
        assert details["worker_id"] == worker_id
        assert details["pid"] == old_pid
        assert details["signal"] == "SIGKILL"  # a stopped process still dies of SIGKILL
        wait_until(lambda: dead(old_pid), timeout=15, message="the hung process killed")
        new_pid = wait_replaced(n, worker_id, old_pid)
        result = sp.execute("ping", timeout=60, app=n.app)
        assert result["pid"] == new_pid
        assert_served_by(n, result)
    finally:
        resume_if_alive(old_pid)


def test_an_idempotent_call_on_a_hung_runtime_is_rerun_on_its_replacement(
    chaos_node: Any,
) -> None:
    n = chaos_node(pool_size=1, env=FAST_HEARTBEAT)
    (worker_id,) = n.worker_ids()
    (old_pid,) = n.worker_pids()
    call = sp.execute_async("sleep", {"seconds": 2}, app=n.app)
    wait_busy(n)
    try:
        os.kill(old_pid, signal.SIGSTOP)
        result = call.get(timeout=60)
        assert result["slept"] == 2
        assert result["worker_id"] == worker_id
        assert result["pid"] != old_pid
        assert dead(old_pid)
        assert ready_pid(n, worker_id) == result["pid"]
    finally:
        resume_if_alive(old_pid)


def test_an_idle_hung_runtime_is_replaced_before_any_call_needs_it(chaos_node: Any) -> None:
    n = chaos_node(pool_size=1, env=FAST_HEARTBEAT)
    (worker_id,) = n.worker_ids()
    (old_pid,) = n.worker_pids()
    try:
        os.kill(old_pid, signal.SIGSTOP)
        wait_until(lambda: dead(old_pid), timeout=30, message="the idle hung process killed")
        new_pid = wait_replaced(n, worker_id, old_pid)
        assert sp.execute("ping", timeout=60, app=n.app)["pid"] == new_pid
    finally:
        resume_if_alive(old_pid)
