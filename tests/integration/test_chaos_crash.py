"""Chaos: adapter runtimes that crash or are killed, mid-call, between calls, mid-stream, under
64 concurrent calls; retries that re-send crashing calls; workers recycled between calls.

Every node gets a private SNAKEPIT_DATA_DIR; after every test its nodes are stopped and no
adapter runtime the test saw may still run (a zombie counts as gone). Every wait is bounded.
"""

from __future__ import annotations

import collections
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_served_by, wait_until

import snakepit_tasks as sp
from snakepit_tasks import errors, keys

from .test_chaos_support import (
    busy_workers,
    chaos_nodes,
    dead,
    outcome,
    ready_pid,
    redis_of,
    snapshot,
    wait_busy,
    wait_replaced,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def chaos_node(node: Any, pids: Any, tmp_path: Path) -> Iterator[Any]:
    yield from chaos_nodes(node, pids, tmp_path)


# -- 1. a crash mid-call, tool not idempotent ----------------------------------------------
@pytest.mark.parametrize(
    "code, exit_code, signal_name, reason",
    [(3, 3, None, "exited with code 3"), ("SIGSEGV", -11, "SIGSEGV", "killed by SIGSEGV")],
    ids=["exit-3", "SIGSEGV"],
)
def test_crash_mid_call_is_worker_crashed_then_the_same_worker_comes_back(
    chaos_node: Any, code: Any, exit_code: int, signal_name: str | None, reason: str
) -> None:
    n = chaos_node()
    (worker_id,) = n.worker_ids()
    (old_pid,) = n.worker_pids()
    generation = int(snapshot(n, worker_id)["generation"])

    with pytest.raises(errors.WorkerCrashed) as info:
        sp.execute("crash", {"code": code}, timeout=60, app=n.app)

    details = info.value.details
    assert details["worker_id"] == worker_id
    assert details["exit_code"] == exit_code
    assert details["signal"] == signal_name
    assert details["reason"] == reason
    assert details["pid"] == old_pid
    assert worker_id in str(info.value) and "crash" in str(info.value)
    # The crash barrier taints the worker, with a TTL.
    r = redis_of(n)
    assert r.exists(keys.taint(worker_id)), "crash_barrier_enabled: the worker must be tainted"
    assert 0 < r.pttl(keys.taint(worker_id)) <= 60_000

    new_pid = wait_replaced(n, worker_id, old_pid)
    assert n.worker_ids() == [worker_id]  # same id, new process
    assert int(snapshot(n, worker_id)["generation"]) == generation + 1
    assert dead(old_pid)
    result = sp.execute("ping", timeout=60, app=n.app)  # the next call succeeds
    assert result["pid"] == new_pid and result["worker_id"] == worker_id
    assert_served_by(n, result)


def test_crash_without_the_crash_barrier_leaves_no_taint(chaos_node: Any) -> None:
    n = chaos_node(env={"SNAKEPIT_CRASH_BARRIER_ENABLED": "false"})
    (worker_id,) = n.worker_ids()
    (old_pid,) = n.worker_pids()
    with pytest.raises(errors.WorkerCrashed) as info:
        sp.execute("crash", {"code": 3}, timeout=60, app=n.app)
    assert info.value.details["exit_code"] == 3
    assert not redis_of(n).exists(keys.taint(worker_id))
    wait_replaced(n, worker_id, old_pid)
    assert not redis_of(n).exists(keys.taint(worker_id))
    assert_served_by(n, sp.execute("ping", timeout=60, app=n.app))


# -- 2. a crash mid-call, tool idempotent --------------------------------------------------
def test_idempotent_call_whose_runtime_is_killed_finishes_on_the_other_worker(
    chaos_node: Any,
) -> None:
    n = chaos_node(pool_size=2)
    call = sp.execute_async("sleep", {"seconds": 2}, app=n.app)
    victim = wait_busy(n)
    victim_pid = ready_pid(n, victim)
    assert victim_pid is not None
    time.sleep(0.3)  # let the request reach the runtime (the sleep lasts 2 s)
    os.kill(victim_pid, signal.SIGKILL)

    result = call.get(timeout=60)
    assert result["slept"] == 2
    assert result["worker_id"] != victim, "re-run on the other worker"
    assert result["pid"] != victim_pid
    assert_served_by(n, result)
    assert redis_of(n).exists(keys.taint(victim))
    wait_replaced(n, victim, victim_pid)
    assert dead(victim_pid)


def test_idempotent_call_whose_only_runtime_is_killed_finishes_on_the_restarted_one(
    chaos_node: Any,
) -> None:
    n = chaos_node(pool_size=1)
    (worker_id,) = n.worker_ids()
    (old_pid,) = n.worker_pids()
    call = sp.execute_async("sleep", {"seconds": 2}, app=n.app)
    assert wait_busy(n) == worker_id
    time.sleep(0.3)  # let the request reach the runtime
    os.kill(old_pid, signal.SIGKILL)

    result = call.get(timeout=60)
    assert result["slept"] == 2
    assert result["worker_id"] == worker_id
    assert result["pid"] != old_pid
    assert_served_by(n, result)
    assert ready_pid(n, worker_id) == result["pid"]
    assert dead(old_pid)


# -- 3. SIGKILL between calls, and during a stream -----------------------------------------
def test_sigkill_between_calls_then_the_next_calls_succeed(chaos_node: Any) -> None:
    n = chaos_node(pool_size=1)
    (worker_id,) = n.worker_ids()
    (old_pid,) = n.worker_pids()
    assert sp.execute("ping", timeout=30, app=n.app)["pid"] == old_pid
    os.kill(old_pid, signal.SIGKILL)
    # Once the node has noticed (it publishes the worker as not ready, or its new pid), calls
    # wait for the restart and succeed; the instant before it notices is the xfail below.
    wait_until(lambda: snapshot(n, worker_id)["state"] != "ready"
               or ready_pid(n, worker_id) != old_pid, timeout=30,
               message="the node noticed the killed runtime")
    served = []
    for _ in range(3):
        result = sp.execute("ping", timeout=60, app=n.app)
        assert result["pid"] != old_pid and result["worker_id"] == worker_id
        served.append(result["pid"])
    assert len(set(served)) == 1  # one restart, then the same process
    assert_served_by(n, sp.execute("ping", timeout=60, app=n.app))
    assert dead(old_pid)


def test_sigkill_during_a_stream_raises_worker_crashed_after_the_chunks_sent(
    chaos_node: Any,
) -> None:
    n = chaos_node(pool_size=1)
    (worker_id,) = n.worker_ids()
    (old_pid,) = n.worker_pids()
    stream = sp.stream("stream_count", {"n": 200, "delay": 0.1}, timeout=120, app=n.app)
    got: list[int] = []
    with pytest.raises(errors.WorkerCrashed) as info:
        for chunk in stream:
            got.append(chunk["i"])
            if len(got) == 3:
                os.kill(old_pid, signal.SIGKILL)
    assert got[:3] == [1, 2, 3]
    assert got == list(range(1, len(got) + 1)), "chunks in order, none lost"
    assert len(got) < 200
    assert info.value.details.get("worker_id") == worker_id
    assert info.value.details.get("signal") == "SIGKILL"
    wait_replaced(n, worker_id, old_pid)
    after = list(sp.stream("stream_count", {"n": 3}, timeout=60, app=n.app))
    assert [c["i"] for c in after] == [1, 2, 3]


def test_a_stream_whose_tool_kills_its_runtime_raises_worker_crashed(chaos_node: Any) -> None:
    n = chaos_node(pool_size=1)
    (worker_id,) = n.worker_ids()
    (old_pid,) = n.worker_pids()
    got: list[dict[str, Any]] = []
    with pytest.raises(errors.WorkerCrashed) as info:
        sp.execute_stream("stream_crash", {"n": 4}, got.append, timeout=60, app=n.app)
    assert [c["i"] for c in got] == [1, 2, 3, 4]
    assert info.value.details.get("exit_code") == 1
    wait_replaced(n, worker_id, old_pid)
    assert_served_by(n, sp.execute("ping", timeout=60, app=n.app))


# -- 5. 64 concurrent calls see one crash: one restart -------------------------------------
def test_sixty_four_concurrent_calls_that_see_one_crash_cause_exactly_one_restart(
    chaos_node: Any,
) -> None:
    n = chaos_node(pool_size=1, worker_profile="thread", threads_per_worker=64)
    (worker_id,) = n.worker_ids()
    (old_pid,) = n.worker_pids()
    generation = int(snapshot(n, worker_id)["generation"])
    r = redis_of(n)

    sleeps = [sp.execute_async("sleep", {"seconds": 4}, app=n.app) for _ in range(63)]
    wait_until(lambda: int(r.hget(keys.busy(n.name), worker_id) or 0) >= 63, timeout=60,
               message=lambda: f"63 sleeps in flight: {busy_workers(n)}")
    crash = sp.execute_async("crash", {"code": 1}, app=n.app)

    crash_outcome = outcome(crash)
    sleep_outcomes = [outcome(c) for c in sleeps]  # every call answered, none hangs

    assert isinstance(crash_outcome, errors.WorkerCrashed), crash_outcome
    assert crash_outcome.details["pid"] == old_pid
    failed = [o for o in sleep_outcomes if isinstance(o, BaseException)]
    assert not failed, f"idempotent sleeps must be re-run, not fail: {failed[:3]}"
    new_pid = wait_replaced(n, worker_id, old_pid)
    pids = collections.Counter(o["pid"] for o in sleep_outcomes)
    assert set(pids) <= {old_pid, new_pid}
    assert pids[new_pid] > 0, "sleeps in flight during the crash ran again on the new process"

    # Exactly one restart: one new generation, and it stays so while the pool keeps serving.
    assert int(snapshot(n, worker_id)["generation"]) == generation + 1
    for _ in range(3):
        assert sp.execute("ping", timeout=60, app=n.app)["pid"] == new_pid
    assert int(snapshot(n, worker_id)["generation"]) == generation + 1
    assert ready_pid(n, worker_id) == new_pid
    assert dead(old_pid)


# -- 10. retry -----------------------------------------------------------------------------
def test_retry_policy_makes_exactly_max_attempts_then_raises_worker_crashed(
    chaos_node: Any,
) -> None:
    n = chaos_node(pool_size=1)
    (worker_id,) = n.worker_ids()
    (first_pid,) = n.worker_pids()
    generation = int(snapshot(n, worker_id)["generation"])
    before = sp.get_stats(n.pool, app=n.app)
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        time.sleep(seconds)

    policy = sp.RetryPolicy(max_attempts=3, backoff_ms=(50,), jitter=0,
                            retriable_errors=(errors.WorkerCrashed,), sleep=pause)
    with pytest.raises(errors.WorkerCrashed) as info:
        sp.execute("crash", {"code": 5}, timeout=60, retry=policy, app=n.app)
    assert info.value.details["exit_code"] == 5
    assert pauses == [0.05, 0.05]  # two pauses between three attempts

    wait_until(lambda: int(snapshot(n, worker_id)["generation"]) >= generation + 3
               and ready_pid(n, worker_id), timeout=30,
               message=lambda: f"three restarts: {n.workers()}")
    last = sp.execute("ping", timeout=60, app=n.app)
    assert last["pid"] != first_pid
    assert int(snapshot(n, worker_id)["generation"]) == generation + 3  # 3 crashes, no more
    after = sp.get_stats(n.pool, app=n.app)
    assert after["errors"] - before["errors"] == 3
    assert after["requests"] - before["requests"] == 4  # three attempts and the ping


def test_retry_does_not_resend_an_error_it_was_not_told_to_retry(chaos_node: Any) -> None:
    n = chaos_node(pool_size=1)
    before = sp.get_stats(n.pool, app=n.app)["requests"]
    policy = sp.RetryPolicy(max_attempts=3, backoff_ms=(10,), jitter=0,
                            retriable_errors=(errors.WorkerCrashed,))
    with pytest.raises(errors.AdapterError):
        sp.execute("fail", {"message": "nope"}, timeout=60, retry=policy, app=n.app)
    assert sp.get_stats(n.pool, app=n.app)["requests"] - before == 1


# -- 11. recycling -------------------------------------------------------------------------
def test_a_worker_is_recycled_after_max_requests_and_no_call_fails(chaos_node: Any) -> None:
    n = chaos_node(pool_size=1, env={"SNAKEPIT_WORKER_MAX_REQUESTS": "3"})
    (worker_id,) = n.worker_ids()
    served = []
    for _ in range(9):
        served.append(sp.execute("ping", timeout=60, app=n.app)["pid"])
        chaos_node.remember(served[-1])
    assert served[0:3] == [served[0]] * 3
    assert served[3:6] == [served[3]] * 3
    assert served[6:9] == [served[6]] * 3
    assert len({served[0], served[3], served[6]}) == 3  # a new process after every 3rd call
    for pid in (served[0], served[3]):
        wait_until(lambda pid=pid: dead(pid), timeout=15, message=f"recycled {pid} stopped")
    assert n.worker_ids() == [worker_id]


def test_recycling_under_concurrent_load_fails_no_call(chaos_node: Any) -> None:
    n = chaos_node(pool_size=2, env={"SNAKEPIT_WORKER_MAX_REQUESTS": "3"})
    calls = [sp.execute_async("spin", {"seconds": 0.05}, app=n.app) for _ in range(24)]
    outcomes = [outcome(c) for c in calls]
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert not failed, f"recycling must not fail calls (spin is not idempotent): {failed[:3]}"
    per_process = collections.Counter(o["pid"] for o in outcomes)
    assert max(per_process.values()) <= 3, per_process
    assert len(per_process) >= 8
    current = set(n.worker_pids())
    for pid in set(per_process) - current:
        wait_until(lambda pid=pid: dead(pid), timeout=15, message=f"recycled {pid} stopped")
