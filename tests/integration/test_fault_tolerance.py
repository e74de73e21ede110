"""Chaos through the real stack: crashes, hangs, killed nodes, a Redis restart, breakers,
retries, recycling. Bounded in time; the fixtures check no adapter process survives."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from helpers import assert_served_by, wait_until

import snakepit_tasks as sp
from snakepit_tasks import connections, errors, keys
from snakepit_tasks.embedded_redis import EmbeddedRedis, free_port

pytestmark = pytest.mark.timeout(150)


def busy_worker(n, timeout: float = 15.0) -> str:
    """The id of the node's worker that is running a call now."""
    r = connections.redis_client(n.app.snakepit_settings.redis_url)
    found: list[str] = []

    def check() -> bool:
        busy = {connections.text(k): int(v) for k, v in r.hgetall(keys.busy(n.name)).items()}
        found[:] = [w for w, count in busy.items() if count > 0]
        return bool(found)

    wait_until(check, timeout=timeout, message="a busy worker")
    return found[0]


def dead(pid: int) -> bool:
    """Gone, or a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" in f.read()
    except OSError:
        return True


def pid_of(n, worker_id: str) -> int:
    return next(int(w["pid"]) for w in n.workers() if w["id"] == worker_id)


def generation_of(n, worker_id: str) -> int:
    return next(int(w["generation"]) for w in n.workers() if w["id"] == worker_id)


@pytest.mark.parametrize(
    "code, field, value", [(3, "exit_code", 3), ("SIGSEGV", "signal", "SIGSEGV")]
)
def test_a_crash_mid_call_is_worker_crashed_and_the_worker_comes_back(node, code, field, value):
    n = node()
    before = n.worker_pids()
    with pytest.raises(errors.WorkerCrashed) as info:
        sp.execute("crash", {"code": code}, app=n.app)
    assert info.value.details[field] == value
    worker_id = info.value.details["worker_id"]
    r = connections.redis_client(n.app.snakepit_settings.redis_url)
    assert r.exists(keys.taint(worker_id))  # the crash barrier taints it
    wait_until(lambda: n.worker_pids() and n.worker_pids() != before, timeout=30,
               message="a restarted worker")
    assert n.worker_ids() == [worker_id]  # same id, new process
    assert_served_by(n, sp.execute("ping", app=n.app))


def test_an_idempotent_call_survives_its_worker_being_killed(node):
    n = node(pool_size=2)
    call = sp.execute_async("sleep", {"seconds": 2}, app=n.app)
    victim = busy_worker(n)
    os.kill(pid_of(n, victim), signal.SIGKILL)
    result = call.get(timeout=60)
    assert result["worker_id"] != victim  # re-run on the other worker
    assert_served_by(n, result)


def test_sigkill_between_calls_then_the_next_calls_succeed(node):
    n = node()
    (pid,) = n.worker_pids()
    os.kill(pid, signal.SIGKILL)
    # Once the process has died (a zombie is enough: the node sees it without reaping), the
    # next call never reaches it. A call sent in the microseconds while it dies may be
    # reported as WorkerCrashed: nothing tells those apart from a call it crashed on.
    wait_until(lambda: dead(pid), timeout=10, message="the runtime dead")
    wait_until(lambda: n.worker_pids() and pid not in n.worker_pids(), timeout=30,
               message="the node has seen the death and restarted the worker")
    for _ in range(3):
        result = sp.execute("ping", timeout=30, app=n.app)
        assert result["pid"] != pid
        assert_served_by(n, result)


def test_a_hung_runtime_is_found_by_heartbeats_and_replaced(node):
    n = node(env={"SNAKEPIT_HEARTBEAT_PING_INTERVAL_MS": "300",
                  "SNAKEPIT_HEARTBEAT_TIMEOUT_MS": "500"})
    call = sp.execute_async("spin", {"seconds": 20}, app=n.app)
    worker = busy_worker(n)
    pid = pid_of(n, worker)
    os.kill(pid, signal.SIGSTOP)
    with pytest.raises(errors.WorkerCrashed) as info:
        call.get(timeout=60)
    assert "heartbeat" in str(info.value)
    wait_until(lambda: dead(pid), timeout=10, message="the hung process killed")
    assert_served_by(n, sp.execute("ping", timeout=30, app=n.app))


def test_sixty_four_calls_that_see_one_crash_cause_one_restart(node):
    n = node(worker_profile="thread", threads_per_worker=64,
             env={"SNAKEPIT_CRASH_BARRIER_ENABLED": "false"})
    (worker,) = n.worker_ids()
    generation = generation_of(n, worker)
    calls = [sp.execute_async("echo", {"i": i}, app=n.app) for i in range(20)]
    calls += [sp.execute_async("sleep", {"seconds": 2}, app=n.app) for _ in range(43)]
    wait_until(lambda: int(connections.redis_client(n.app.snakepit_settings.redis_url)
                           .hget(keys.busy(n.name), worker) or 0) >= 40, timeout=30,
               message="the sleeps in flight")
    crash = sp.execute_async("crash", {"code": 1}, app=n.app)
    outcomes = []
    for c in [*calls, crash]:
        try:
            outcomes.append(c.get(timeout=60))
        except errors.SnakepitError as exc:
            outcomes.append(exc)
    assert len(outcomes) == 64  # every call answered, none hangs
    assert isinstance(outcomes[-1], errors.WorkerCrashed)
    wait_until(lambda: n.worker_pids(), timeout=30, message="the worker back")
    time.sleep(1.5)  # let a (wrong) second restart show up in the lease
    assert generation_of(n, worker) == generation + 1


def test_a_killed_node_strands_no_caller(node):
    a = node(pool_size=1)
    b = node(pool=a.pool, name=f"{a.pool}-b@itest", pool_size=1)
    app = b.app
    r = connections.redis_client(app.snakepit_settings.redis_url)
    # A session bound to A's worker.
    sid = None
    for i in range(30):
        if sp.execute_in_session(f"k{i}", "ping", app=app)["worker_id"].startswith(a.name):
            sid = f"k{i}"
            break
    assert sid, "no session landed on node A"
    long = sp.execute_in_session_async(sid, "sleep", {"seconds": 30}, affinity="strict_queue",
                                       app=app)
    wait_until(lambda: int(r.hget(keys.busy(a.name), f"{a.name}/0") or 0) >= 1, timeout=15,
               message="A busy")
    queued = [sp.execute_in_session_async(sid, "ping", affinity="strict_queue", app=app)
              for _ in range(2)]
    a_runtimes = a.worker_pids()
    os.kill(a.pid, signal.SIGKILL)
    a.proc.wait(10)
    for call in [long, *queued]:
        with pytest.raises(errors.SessionWorkerUnavailable):
            call.get(timeout=60)
    with pytest.raises(errors.SessionWorkerUnavailable):
        sp.execute_in_session(sid, "ping", affinity="strict_queue", app=app)
    # hint moves on; plain calls are served by B.
    assert sp.execute_in_session(sid, "ping", app=app)["worker_id"].startswith(b.name)
    assert_served_by(b, sp.execute("ping", app=app))
    for pid in a_runtimes:
        wait_until(lambda pid=pid: dead(pid), timeout=10,
                   message=f"runtime {pid} of the killed node gone")


def test_idempotent_calls_a_killed_node_had_taken_complete_elsewhere(node):
    a = node(pool_size=1)
    b = node(pool=a.pool, name=f"{a.pool}-b@itest", pool_size=1)
    app = b.app
    r = connections.redis_client(app.snakepit_settings.redis_url)
    calls = [sp.execute_async("sleep", {"seconds": 2}, app=app) for _ in range(2)]
    wait_until(lambda: int(r.hget(keys.busy(a.name), f"{a.name}/0") or 0) >= 1, timeout=15,
               message="A running one")
    os.kill(a.pid, signal.SIGKILL)
    a.proc.wait(10)
    results = [c.get(timeout=90) for c in calls]
    assert all(res["worker_id"].startswith(b.name) or res["slept"] == 3 for res in results)
    assert any(res["worker_id"].startswith(b.name) for res in results)


def test_a_redis_restart_errors_cleanly_then_the_pool_serves_again(node, make_app, pids):
    port = free_port()
    redis_server = EmbeddedRedis(port=port).start()
    try:
        n = node(wait=False, env={"SNAKEPIT_REDIS_URL": redis_server.url})
        app = sp.configure(redis_url=redis_server.url, pools=[n.table])
        sp.await_ready(n.pool, timeout=30, app=app)
        outcomes: list[object] = []

        def call() -> None:
            try:
                outcomes.append(sp.execute("sleep", {"seconds": 2}, timeout=20, app=app))
            except errors.SnakepitError as exc:
                outcomes.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.5)
        redis_server.stop()
        redis_server = EmbeddedRedis(port=port).start()
        caller.join(60)
        assert not caller.is_alive()
        assert len(outcomes) == 1  # a result or a snakepit error: never a raw exception
        sp.await_ready(n.pool, timeout=60, app=app)
        wait_until(lambda: _pings(app), timeout=60, message="the pool serving again")
    finally:
        redis_server.stop()


def _pings(app) -> bool:
    try:
        return sp.execute("ping", timeout=5, app=app)["status"] == "pong"
    except errors.SnakepitError:
        return False


def test_the_circuit_breaker_opens_half_opens_and_closes(node, make_app):
    settings = {"circuit_breaker_failure_threshold": 2, "circuit_breaker_reset_timeout_ms": 1000,
                "crash_barrier_enabled": False}
    n = node(env={"SNAKEPIT_" + k.upper(): str(v) for k, v in settings.items()})
    app = make_app(n.table, **settings)
    sp.CircuitBreaker(n.pool, settings=app.snakepit_settings).reset()
    with pytest.raises(errors.AdapterError):  # the tool's own error does not count
        sp.execute("fail", app=app)
    for _ in range(2):
        with pytest.raises(errors.WorkerCrashed):
            sp.execute("crash", {"code": 1}, app=app)
    requests = sp.get_stats(n.pool, app=app)["requests"]
    with pytest.raises(errors.CircuitOpen):
        sp.execute("ping", app=app)
    assert sp.get_stats(n.pool, app=app)["requests"] == requests  # nothing was sent
    time.sleep(1.2)
    wait_until(lambda: n.worker_pids(), timeout=30, message="worker back")
    with pytest.raises(errors.WorkerCrashed):  # a failing trial re-opens it
        sp.execute("crash", {"code": 1}, app=app)
    assert sp.get_stats(n.pool, app=app)["circuit"] == "open"
    time.sleep(1.2)
    wait_until(lambda: n.worker_pids(), timeout=30, message="worker back")
    assert_served_by(n, sp.execute("ping", app=app))  # a good trial closes it
    assert sp.get_stats(n.pool, app=app)["circuit"] == "closed"


def test_retry_makes_exactly_the_attempts_it_promises(node, make_app):
    n = node(env={"SNAKEPIT_CRASH_BARRIER_ENABLED": "false"})
    app = make_app(n.table, circuit_breaker_enabled=False)
    (worker,) = n.worker_ids()
    generation = generation_of(n, worker)
    policy = sp.RetryPolicy(max_attempts=3, backoff_ms=(50,), jitter=0,
                            retriable_errors=(errors.WorkerCrashed,))
    with pytest.raises(errors.WorkerCrashed):
        sp.execute("crash", {"code": 1}, retry=policy, app=app)
    wait_until(lambda: n.worker_pids() and generation_of(n, worker) >= generation + 3,
               timeout=30, message="three crashes, three restarts")
    time.sleep(1.5)
    assert generation_of(n, worker) == generation + 3


def test_workers_are_recycled_between_calls(node):
    n = node(env={"SNAKEPIT_WORKER_MAX_REQUESTS": "3"})
    pids_seen = []
    for _ in range(7):
        result = sp.execute("ping", timeout=30, app=n.app)
        pids_seen.append(result["pid"])
    assert len(set(pids_seen)) >= 2  # replaced after its third call, and no call failed
    assert pids_seen[:3] == [pids_seen[0]] * 3


def test_sigkill_of_a_runtime_during_a_stream_is_worker_crashed(node):
    n = node()
    got: list[dict] = []

    def callback(chunk: dict) -> None:
        got.append(chunk)
        if len(got) == 2:
            os.kill(pid_of(n, n.worker_ids()[0]), signal.SIGKILL)

    with pytest.raises(errors.WorkerCrashed):
        sp.execute_stream("stream_count", {"n": 100, "delay": 0.1}, callback, timeout=60,
                          app=n.app)
    assert [c["i"] for c in got[:2]] == [1, 2]
    assert_served_by(n, sp.execute("ping", timeout=30, app=n.app))
