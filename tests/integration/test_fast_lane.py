"""The fast lane (synchronous calls over Redis lists): what travels where, and recovery.

A synchronous call is pushed to the pool's (or its session node's) fast-lane list, a node
moves it into its processing list while it runs and removes it with the reply; the janitor
recovers the processing list and node list of a node that died; a stopping node hands back
the calls it has not started. The rest of the semantics is covered on both lanes by the
modules parametrised in tests/conftest.py (LANE_MODULES)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_served_by, wait_until

import snakepit_tasks as sp
from snakepit_tasks import connections, errors, fast_lane, keys

from .test_chaos_support import chaos_nodes

pytestmark = pytest.mark.timeout(150)
NODE_ENV = {"SNAKEPIT_POOL_QUEUE_TIMEOUT": "60000"}


@pytest.fixture
def chaos_node(node: Any, pids: Any, tmp_path: Path) -> Any:
    yield from chaos_nodes(node, pids, tmp_path)


def run_async(fn: Any) -> dict[str, Any]:
    """Run ``fn`` in a thread; the dict gets its result (or exception) under "value"."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except Exception as exc:
            box["value"] = exc

    box["thread"] = threading.Thread(target=target, daemon=True)
    box["thread"].start()
    return box


def test_sync_calls_travel_the_fast_lane_and_leave_nothing_behind(node, redis_url):
    n = node(pool_size=1)
    app = sp.configure(redis_url=redis_url, pools=[n.table], fast_lane=True)
    r = connections.redis_client(redis_url)
    assert_served_by(n, sp.execute("ping", app=app))
    assert sp.execute("add", {"a": 1, "b": 2}, app=app) == 3
    assert sp.execute("echo", {"b": b"\x00\xff"}, app=app) == {"b": b"\x00\xff"}
    with pytest.raises(errors.ToolNotFound):
        sp.execute("no_such_tool", app=app)
    assert r.llen(keys.fast_pool_queue(n.pool)) == 0
    assert r.llen(keys.fast_processing(n.name)) == 0
    assert sp.get_stats(n.pool, app=app)["requests"] >= 4


def test_a_killed_nodes_fast_lane_calls_are_recovered_by_the_janitor(chaos_node, redis_url):
    """A (one worker) runs a long idempotent call and holds a second one waiting for its slot;
    A is SIGKILLed: B's janitor re-runs both (idempotent) and fails a non-idempotent one that
    A had started."""
    a = chaos_node(pool_size=1, env=NODE_ENV)
    b = chaos_node(pool=a.pool, name=f"{a.pool}-b@itest", pool_size=1, env=NODE_ENV, wait=False)
    app = sp.configure(redis_url=redis_url, pools=[a.table], fast_lane=True,
                       pool_queue_timeout=60_000)
    r = connections.redis_client(redis_url)
    wait_until(lambda: len(sp.list_workers(a.pool, app=app)) == 2, timeout=60,
               message="both nodes ready")
    # Keep B busy, so A takes the calls below.
    b_busy = run_async(lambda: sp.execute_in_session(
        _session_on(app, b), "sleep", {"seconds": 6}, app=app, timeout=60))
    wait_until(lambda: int(r.hget(keys.busy(b.name), f"{b.name}/0") or 0) >= 1, timeout=30,
               message="B busy")
    started = run_async(lambda: sp.execute("spin", {"seconds": 20}, app=app, timeout=60))
    wait_until(lambda: _started_on(r, a), timeout=30, message="A running the spin call")
    os.kill(a.pid, signal.SIGKILL)
    a.proc.wait(10)
    started["thread"].join(60)
    assert isinstance(started["value"], errors.WorkerCrashed), started["value"]
    assert "not idempotent" in str(started["value"])
    b_busy["thread"].join(60)
    assert isinstance(b_busy["value"], dict), b_busy["value"]
    # An idempotent call after A's death is served by B.
    assert sp.execute("sleep", {"seconds": 0.1}, app=app, timeout=30)["worker_id"].startswith(
        b.name)
    wait_until(lambda: r.llen(keys.fast_processing(a.name)) == 0, timeout=30,
               message="A's processing list emptied by the janitor")


def _started_on(r: Any, n: Any) -> bool:
    """Whether a call in ``n``'s fast-lane processing list has started there (taken alone is
    not started: the janitor would rightly re-route it)."""
    for raw in r.lrange(keys.fast_processing(n.name), 0, -1):
        call_id, _ = fast_lane.decode(bytes(raw))
        if r.get(keys.call_state(call_id)) == f"started:{n.name}".encode():
            return True
    return False


def _session_on(app: Any, want: Any) -> str:
    for i in range(60):
        sid = f"fl-{i}-{os.getpid()}"
        if sp.execute_in_session(sid, "ping", app=app, timeout=30)["worker_id"].startswith(
                want.name + "/"):
            return sid
    raise AssertionError(f"no session landed on {want.name}")


def test_a_stopping_node_hands_back_fast_lane_calls_it_has_not_started(chaos_node, redis_url):
    a = chaos_node(pool_size=1, env=NODE_ENV)
    app = sp.configure(redis_url=redis_url, pools=[a.table], fast_lane=True,
                       pool_queue_timeout=60_000)
    r = connections.redis_client(redis_url)
    running = run_async(lambda: sp.execute("sleep", {"seconds": 2}, app=app, timeout=60))
    wait_until(lambda: int(r.hget(keys.busy(a.name), f"{a.name}/0") or 0) >= 1, timeout=30,
               message="A busy")
    waiting = run_async(lambda: sp.execute("sleep", {"seconds": 0.1}, app=app, timeout=60))
    wait_until(lambda: r.llen(keys.fast_pool_queue(a.pool)) == 1, timeout=30,
               message="the second call waiting in the pool's fast-lane list")
    a.proc.send_signal(signal.SIGTERM)
    running["thread"].join(60)
    assert isinstance(running["value"], dict), running["value"]  # finished within the grace
    a.proc.wait(60)
    # Not started: still (or again) in the pool's list, for the next node.
    assert r.llen(keys.fast_pool_queue(a.pool)) == 1
    b = chaos_node(pool=a.pool, name=f"{a.pool}-b@itest", pool_size=1, env=NODE_ENV, wait=False)
    waiting["thread"].join(90)
    assert isinstance(waiting["value"], dict), waiting["value"]
    assert waiting["value"]["worker_id"].startswith(b.name)


def test_a_call_a_killed_node_left_in_its_landing_list_runs_on_another(chaos_node, redis_url):
    """A take moves a call into its crew's landing list and, in the same round trip, on to
    the processing list (fast_take.lua). Were the node killed in between, the janitor finds
    the call in the landing list and re-routes it: it never started."""
    import time
    import uuid

    from snakepit_tasks import replies, routing

    a = chaos_node(pool_size=1, env=NODE_ENV)
    b = chaos_node(pool=a.pool, name=f"{a.pool}-b@itest", pool_size=1, env=NODE_ENV)
    app = sp.configure(redis_url=redis_url, pools=[a.table], fast_lane=True,
                       pool_queue_timeout=60_000)
    r = connections.redis_client(redis_url)
    os.kill(a.pid, signal.SIGKILL)
    a.proc.wait(10)
    call = routing.parse(app.snakepit_settings, ("ping", {}),
                         {"deadline": time.time() + 60, "reply": True})
    call_id = str(uuid.uuid4())
    r.lpush(keys.fast_landing(a.name, "pool"), fast_lane.encode(call_id, call))
    body = replies.pop(r, call_id, time.time() + 60)
    assert body is not None, "the janitor re-routed the call and a node answered it"
    result = replies.outcome(body, app.snakepit_settings)
    assert result["worker_id"].startswith(b.name + "/")
    assert r.llen(keys.fast_landing(a.name, "pool")) == 0
