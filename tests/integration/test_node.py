"""snakepit_tasks.node: a real Celery node hosting adapter runtimes (restart, shutdown, start
failures, several pools side by side)."""

from __future__ import annotations

import os
import signal

import pytest
from helpers import (
    WHOAMI,
    WHOAMI_ENV,
    assert_served_by,
    cmdline,
    start_time,
    wait_until,
)

from snakepit_tasks import caller, errors

pytestmark = pytest.mark.timeout(120)


def test_runtimes_are_children_of_the_node_and_tracked(node, pids):
    n = node(pool_size=2)
    workers = n.worker_pids()
    assert len(workers) == 2
    assert set(workers) <= n.child_pids()
    assert set(workers) <= set(pids.seen), "the process tracker must see every runtime"
    for pid in workers:
        assert "snakepit_tasks.bridge.runtime" in cmdline(pid)
        assert f"--worker-id {n.name}/" in cmdline(pid)


def test_sigkilled_worker_is_restarted(node):
    n = node(pool_size=1)
    pong = caller.execute("ping", app=n.app)
    old_pid = assert_served_by(n, pong)
    worker_id = pong["worker_id"]

    os.kill(old_pid, signal.SIGKILL)
    wait_until(lambda: start_time(old_pid) is None, timeout=10, message="the worker to die")
    new_pids = wait_until(
        lambda: [p for p in n.worker_pids() if p != old_pid],
        timeout=30,
        message="a restarted worker",
    )
    assert len(new_pids) == 1

    for _ in range(3):
        again = caller.execute("ping", app=n.app, timeout=30)
        assert again["worker_id"] == worker_id
        assert again["pid"] == new_pids[0] != old_pid
        assert_served_by(n, again)


def test_sigterm_mid_call_finishes_the_call(node):
    n = node(pool_size=1)
    worker_pid = n.worker_pids()[0]
    result = caller.execute_async("sleep", {"seconds": 2.0}, app=n.app)
    # wait until the node is really running it (the lease shows the slot taken)
    wait_until(lambda: any(w["inflight"] for w in n.workers()), timeout=10,
               message="the call to start")
    n.proc.send_signal(signal.SIGTERM)
    try:
        value = result.get(timeout=30)
    except errors.SnakepitError as exc:  # acceptable: a snakepit error, never a hang
        value = exc
    if isinstance(value, dict):
        assert value["slept"] == 2.0 and value["pid"] == worker_pid
    assert n.proc.wait(30) == 0, n.output()
    # the lease is withdrawn: new calls fail fast instead of waiting for a gone node
    with pytest.raises(errors.NoWorkersAvailable):
        caller.execute("ping", app=n.app)


SHORT_GRACE = {"SNAKEPIT_GRACEFUL_SHUTDOWN_TIMEOUT_MS": "2000"}


def test_sigterm_during_a_long_call_fails_it_after_the_grace_period(node):
    """A call that outlives the shutdown grace period is cut short with a snakepit error."""
    n = node(pool_size=1, env=SHORT_GRACE)
    # a long, NOT idempotent tool (stream_count run as a plain call: about 60 s)
    result = caller.execute_async("stream_count", {"n": 600, "delay": 0.1}, app=n.app)
    wait_until(lambda: any(w["inflight"] for w in n.workers()), timeout=10,
               message="the call to start")
    n.proc.send_signal(signal.SIGTERM)
    with pytest.raises(errors.SnakepitError):
        result.get(timeout=30)
    n.proc.wait(30)


def test_sigterm_during_a_long_idempotent_call_loses_nothing(node):
    """An idempotent call cut short by a node's shutdown is not lost: it either fails with a
    snakepit error or (requeued) runs to the end on another node of the pool."""
    first = node(pool_size=1, env=SHORT_GRACE)
    result = caller.execute_async("sleep", {"seconds": 6}, app=first.app)  # idempotent tool
    wait_until(lambda: any(w["inflight"] for w in first.workers()), timeout=10,
               message="the call to start")
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(30) == 0, first.output()

    second = node(pool=first.pool, pool_size=1, name=f"{first.pool}@itest2")
    try:
        value = result.get(timeout=60)
    except errors.SnakepitError:
        return
    assert value["slept"] == 6
    assert value["worker_id"] == f"{second.name}/0"
    assert_served_by(second, value)


def test_adapter_that_fails_to_import_stops_the_node(node):
    n = node(adapter="no_such_module:Nope", wait=False)
    rc = n.proc.wait(60)
    out = n.output()
    assert rc != 0, out
    assert "no_such_module" in out
    assert "ModuleNotFoundError" in out
    assert n.workers() == []  # never published as serving


def test_adapter_class_missing_stops_the_node(node):
    n = node(adapter="adapters.showcase:NoSuchClass", wait=False)
    rc = n.proc.wait(60)
    out = n.output()
    assert rc != 0, out
    assert "NoSuchClass" in out


def test_two_pools_are_isolated(node, make_app):
    a = node(pool_size=2)
    b = node(pool_size=1, adapter=WHOAMI, adapter_env=WHOAMI_ENV)
    app = make_app(a, b)

    ids_a = caller.list_workers(a.pool, app=app)
    ids_b = caller.list_workers(b.pool, app=app)
    assert len(ids_a) == 2 and len(ids_b) == 1
    assert all(i.startswith(f"{a.pool}@") for i in ids_a)
    assert all(i.startswith(f"{b.pool}@") for i in ids_b)
    assert not set(a.worker_pids()) & set(b.worker_pids())

    pong = caller.execute("ping", pool=a.pool, app=app)
    assert_served_by(a, pong)
    me = caller.execute("whoami", pool=b.pool, app=app)
    assert me["adapter"] == "whoami"
    assert_served_by(b, me)

    # each pool runs only its own adapter
    with pytest.raises(errors.ToolNotFound) as info:
        caller.execute("whoami", pool=a.pool, app=app)
    assert "whoami" not in info.value.details["available"]
    with pytest.raises(errors.ToolNotFound) as info:
        caller.execute("ping", pool=b.pool, app=app)
    assert info.value.details["available"] == ["whoami"]

    stats_a = caller.get_stats(a.pool, app=app)
    stats_b = caller.get_stats(b.pool, app=app)
    assert (stats_a["workers"], stats_b["workers"]) == (2, 1)
    assert (stats_a["requests"], stats_b["requests"]) == (2, 2)
