"""Affinity modes (hint, strict_queue, strict_fail_fast) against busy, crashed and vanished
workers, with real nodes and adapter processes."""

from __future__ import annotations

import dataclasses
import os
import signal
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import helpers
import pytest
from helpers import assert_served_by, start_time, wait_until

import snakepit_tasks as sp
from snakepit_tasks import connections, errors, keys, routing

from .peers import configure, new_session, start_peer

pytestmark = pytest.mark.timeout(120)


# -- local fixtures and helpers -------------------------------------------------------------
def busy(n: helpers.NodeHandle, worker_id: str) -> int:
    """Calls in flight on ``worker_id`` as the routing sees them (the node's busy hash)."""
    r = connections.redis_client(n.redis_url)
    return int(r.hget(keys.busy(n.name), worker_id) or 0)


def bind(n: helpers.NodeHandle, sid: str, app: Any) -> dict[str, Any]:
    """Start session ``sid`` with a ping; return the ping (served by ``n``)."""
    pong = sp.execute_in_session(sid, "ping", app=app)
    assert_served_by(n, pong)
    info = sp.sessions.get(sid, app=app)
    assert info is not None and info["worker"] == pong["worker_id"]
    return pong


# -- concurrency ----------------------------------------------------------------------------
def test_strict_queue_concurrent_calls_all_land_on_the_bound_worker(node):
    n = node(pool_size=3)
    sid = new_session()
    pong = bind(n, sid, n.app)
    key = f"k-{uuid.uuid4().hex}"
    sp.execute_in_session(sid, "remember", {"key": key, "value": 7}, app=n.app)

    def call(_: int) -> dict[str, Any]:
        return sp.execute_in_session(
            sid, "recall", {"key": key}, affinity="strict_queue", app=n.app, timeout=60
        )

    with ThreadPoolExecutor(20) as ex:
        results = list(ex.map(call, range(20)))
    assert {r["pid"] for r in results} == {pong["pid"]}
    assert all(r["found"] and r["value"] == 7 for r in results)
    assert_served_by(n, results[-1])
    assert sp.sessions.get(sid, app=n.app)["worker"] == pong["worker_id"]


def test_hint_concurrent_calls_may_spill_but_the_binding_stays(node):
    n = node(pool_size=3)
    sid = new_session()
    pong = bind(n, sid, n.app)
    created = sp.sessions.get(sid, app=n.app)["created"]

    def call(_: int) -> dict[str, Any]:
        return sp.execute_in_session(
            sid, "sleep", {"seconds": 0.3}, affinity="hint", app=n.app, timeout=60
        )

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(call, range(8)))
    for r in results:
        assert_served_by(n, r)
    spilled = Counter(r["worker_id"] for r in results if r["worker_id"] != pong["worker_id"])
    info = sp.sessions.get(sid, app=n.app)
    assert info["worker"] == pong["worker_id"], f"re-bound after spilling to {spilled}"
    assert info["created"] == created
    # Once idle, the session's calls are back on its worker.
    assert sp.execute_in_session(sid, "ping", affinity="hint", app=n.app)["pid"] == pong["pid"]


def test_busy_bound_worker_per_affinity_mode(node):
    """strict_fail_fast: WorkerBusy at once; hint: another worker, binding kept;
    strict_queue: waits for the bound worker."""
    n = node(pool_size=2)
    sid = new_session()
    pong = bind(n, sid, n.app)
    bound = pong["worker_id"]

    sleeper = sp.execute_in_session_async(
        sid, "sleep", {"seconds": 3}, affinity="strict_queue", app=n.app
    )
    wait_until(lambda: busy(n, bound) >= 1, timeout=15, message="the bound worker to be busy")

    with pytest.raises(errors.WorkerBusy) as info:
        sp.execute_in_session(sid, "ping", affinity="strict_fail_fast", app=n.app, timeout=30)
    assert bound in str(info.value)
    assert not sleeper.ready(), "WorkerBusy must not wait for the busy worker"

    other = sp.execute_in_session(sid, "ping", affinity="hint", app=n.app, timeout=30)
    assert_served_by(n, other)
    assert other["worker_id"] != bound and other["pid"] != pong["pid"]
    assert other["session_id"] == sid
    assert sp.sessions.get(sid, app=n.app)["worker"] == bound, "hint fallback re-bound"

    queued = sp.execute_in_session(sid, "ping", affinity="strict_queue", app=n.app, timeout=30)
    assert queued["worker_id"] == bound and queued["pid"] == pong["pid"]
    slept = sleeper.get(timeout=30)
    assert slept["pid"] == pong["pid"]
    assert_served_by(n, queued)
    assert sp.sessions.get(sid, app=n.app)["worker"] == bound


def test_calls_routed_before_their_session_was_bound_to_a_busy_worker(node, monkeypatch):
    """Calls sent while their session was unbound (to the pool, to bind where they run) that
    reach the node once it is bound to a busy worker: hint runs on a free worker and keeps
    the binding; strict_queue waits for the bound worker."""
    n = node(pool_size=2)
    sid = new_session()
    bound = bind(n, sid, n.app)["worker_id"]
    sleeper = sp.execute_in_session_async(
        sid, "sleep", {"seconds": 3}, affinity="strict_queue", app=n.app
    )
    wait_until(lambda: busy(n, bound) >= 1, timeout=15, message="the bound worker to be busy")

    route = routing.route

    def as_if_unbound(settings: Any, call: Any, admission: Any = None) -> routing.Route:
        sent = route(settings, call.replace(session_id=None), admission)
        return dataclasses.replace(sent, call=sent.call.replace(session_id=call.session_id))

    monkeypatch.setattr(routing, "route", as_if_unbound)
    monkeypatch.setattr(routing, "session_send", lambda settings, call: None)
    other = sp.execute_in_session(sid, "ping", affinity="hint", app=n.app, timeout=30)
    assert_served_by(n, other)
    assert other["worker_id"] != bound and other["session_id"] == sid
    assert not sleeper.ready(), "the hint call waited for the busy worker"
    assert sp.sessions.get(sid, app=n.app)["worker"] == bound, "hint fallback re-bound"

    queued = sp.execute_in_session(sid, "ping", affinity="strict_queue", app=n.app, timeout=30)
    assert queued["worker_id"] == bound
    assert sleeper.get(timeout=30)["worker_id"] == bound


# -- crashes --------------------------------------------------------------------------------
def test_sigkilled_bound_worker_strict_unavailable_while_tainted_hint_rebinds(node):
    n = node(pool_size=2)
    sid = new_session()
    pong = bind(n, sid, n.app)
    bound, dead_pid = pong["worker_id"], pong["pid"]
    r = connections.redis_client(n.redis_url)

    os.kill(dead_pid, signal.SIGKILL)
    wait_until(lambda: start_time(dead_pid) is None, timeout=10, message="the worker to die")
    # crash_barrier_enabled (default): the worker is tainted for
    # crash_barrier_taint_duration_ms (60 s), restart or not.
    wait_until(lambda: r.exists(keys.taint(bound)), timeout=10, message="the taint")

    for mode in ("strict_queue", "strict_fail_fast"):
        with pytest.raises(errors.SessionWorkerUnavailable) as info:
            sp.execute_in_session(sid, "ping", affinity=mode, app=n.app, timeout=30)
        assert bound in str(info.value) and "tainted" in str(info.value), mode
    assert sp.sessions.get(sid, app=n.app)["worker"] == bound, "strict calls keep the binding"

    # hint: served elsewhere (the node prefers untainted workers) and re-bound there.
    moved = sp.execute_in_session(sid, "ping", affinity="hint", app=n.app, timeout=30)
    assert_served_by(n, moved)
    assert moved["pid"] != dead_pid and moved["worker_id"] != bound
    assert moved["session_id"] == sid
    assert sp.sessions.get(sid, app=n.app)["worker"] == moved["worker_id"]

    # The crashed worker comes back under the same id with a new process...
    wait_until(
        lambda: len(n.worker_pids()) == 2 and dead_pid not in n.worker_pids(),
        timeout=30,
        message="the crashed worker to be restarted",
    )
    assert bound in n.worker_ids()
    # ...and strict calls follow the new binding.
    again = sp.execute_in_session(sid, "ping", affinity="strict_queue", app=n.app, timeout=30)
    assert again["pid"] == moved["pid"]
    assert_served_by(n, again)


def test_sigkilled_node_strict_unavailable_hint_served_by_other_node(node, node_env, redis_url):
    # A long queue timeout, so that calls sent while the dead node's lease still lasts are
    # decided by the janitor (strict: failed; hint: re-routed) rather than timing out.
    node_env["SNAKEPIT_POOL_QUEUE_TIMEOUT"] = "20000"
    a = node(pool_size=1, name=f"nk{uuid.uuid4().hex[:6]}@a")
    app = configure(redis_url, a, pool_queue_timeout=20000)
    strict_sid, hint_sid = new_session(), new_session()
    bind(a, strict_sid, app)
    bind(a, hint_sid, app)
    b = start_peer(node, a, f"{a.pool}@b")
    r = connections.redis_client(redis_url)

    os.kill(a.pid, signal.SIGKILL)
    a.proc.wait(10)
    # Both sessions are still bound to a's worker, and its lease lasts up to node_lease_ttl_ms
    # (5 s): calls sent now go to a's queue, where b's janitor finds them once the lease lapses.
    with ThreadPoolExecutor(2) as ex:
        strict = ex.submit(
            sp.execute_in_session, strict_sid, "ping", affinity="strict_queue", app=app, timeout=40
        )
        hint = ex.submit(
            sp.execute_in_session, hint_sid, "ping", affinity="hint", app=app, timeout=40
        )
        with pytest.raises(errors.SessionWorkerUnavailable):
            strict.result(timeout=60)
        served = hint.result(timeout=60)
    assert_served_by(b, served)
    assert served["session_id"] == hint_sid
    assert not r.exists(keys.node_lease(a.name))
    assert sp.sessions.get(hint_sid, app=app)["node"] == b.name, "hint re-binds elsewhere"

    # Now the lease is gone: routing itself decides, at once.
    with pytest.raises(errors.SessionWorkerUnavailable) as info:
        sp.execute_in_session(strict_sid, "ping", affinity="strict_queue", app=app, timeout=30)
    assert "gone" in str(info.value)
    pong = sp.execute_in_session(hint_sid, "ping", affinity="hint", app=app, timeout=30)
    assert_served_by(b, pong)
    assert pong["session_id"] == hint_sid
    info_hint = sp.sessions.get(hint_sid, app=app)
    assert info_hint["node"] == b.name and info_hint["worker"] == pong["worker_id"]
    assert served["pid"] == pong["pid"]
