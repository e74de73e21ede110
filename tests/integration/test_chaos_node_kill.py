"""Chaos: a whole node SIGKILLed with calls running on it and queued for it, and a node that
restarts after a SIGKILL and sweeps the leftovers of its instance (process registry).

Two nodes A and B serve one pool (one worker each, so two Celery threads each). After A's
lease expires, the janitor on B fails A's strict-session calls with SessionWorkerUnavailable
and moves the others to the pool queue (an idempotent call A had started runs again on B).
Every caller must get an outcome within a bound; no runtime of A may survive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, NodeHandle, assert_served_by, subprocess_env, wait_until

import snakepit_tasks as sp
from snakepit_tasks import connections, errors, keys, kombu_redis, pool_state, sessions

from .test_chaos_support import chaos_nodes, dead, outcome, redis_of, wait_busy

pytestmark = pytest.mark.timeout(150)

# Calls waiting for a busy worker keep waiting (instead of QueueTimeout after 5 s), so where
# each call sits when A dies is known.
QUEUE_TIMEOUT_MS = 60_000
NODE_ENV = {"SNAKEPIT_POOL_QUEUE_TIMEOUT": str(QUEUE_TIMEOUT_MS)}
BOUND = 30.0  # seconds within which every caller must hear about A's death


@pytest.fixture
def chaos_node(node: Any, pids: Any, tmp_path: Path) -> Iterator[Any]:
    yield from chaos_nodes(node, pids, tmp_path)


def two_nodes(chaos_node: Any, make_app: Any) -> tuple[NodeHandle, NodeHandle, Any]:
    a = chaos_node(pool_size=1, env=NODE_ENV)
    b = chaos_node(pool=a.pool, name=f"{a.pool}-b@itest", pool_size=1, env=NODE_ENV)
    app = make_app(a.table, pool_queue_timeout=QUEUE_TIMEOUT_MS)
    return a, b, app


def bind_session(app: Any, want: NodeHandle, tag: str) -> str:
    """A new session bound to ``want``'s worker (the first call of a session binds it to
    whichever node takes it: try until one lands on ``want``)."""
    for i in range(60):
        sid = f"{tag}-{uuid.uuid4().hex[:6]}-{i}"
        result = sp.execute_in_session(sid, "ping", timeout=30, app=app)
        if result["worker_id"].startswith(want.name + "/"):
            return sid
    raise AssertionError(f"no session landed on {want.name} in 60 tries")


def queued(r: Any, queue: str) -> int:
    """Calls waiting in a pool or node queue, on either lane; for a node, also the fast-lane
    calls it holds without running them yet (a Celery thread holds its message unacked)."""
    count = kombu_redis.queue_length(r, queue)
    kind, _, name = queue.partition(".")[2].partition(".")
    if kind == "pool":
        return count + int(r.llen(keys.fast_pool_queue(name)))
    return count + int(r.llen(keys.fast_node_queue(name))) + int(
        r.llen(keys.fast_processing(name)))


def call_state(r: Any, task_id: str) -> str | None:
    raw = r.get(keys.call_state(task_id))
    return connections.text(raw) if raw is not None else None


def sigkill_node(n: NodeHandle) -> list[int]:
    """SIGKILL the node process; returns the runtime pids it had."""
    runtimes = n.worker_pids()
    assert runtimes
    os.kill(n.pid, signal.SIGKILL)
    n.proc.wait(10)
    return runtimes


def capture(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # the test inspects what it got, raw exceptions included
        return exc


# -- 6. sessions ---------------------------------------------------------------------------
def test_a_killed_node_fails_its_strict_session_calls_and_hint_calls_move_on(
    chaos_node: Any, make_app: Any
) -> None:
    a, b, app = two_nodes(chaos_node, make_app)
    r = redis_of(a)
    s_strict = bind_session(app, a, "strict")
    s_hint = bind_session(app, a, "hint")

    running = sp.execute_in_session_async(s_strict, "sleep", {"seconds": 60},
                                          affinity="strict_queue", app=app)
    wait_busy(a)
    pinned = [sp.execute_in_session_async(s_strict, "ping", affinity="strict_queue", app=app)
              for _ in range(2)]
    sync_outcome: list[Any] = []
    sync_caller = threading.Thread(target=lambda: sync_outcome.append(capture(
        lambda: sp.execute_in_session(s_strict, "ping", affinity="strict_queue", timeout=120,
                                      app=app))))
    sync_caller.start()
    # One pinned call is held by A's second Celery thread, the two others wait in A's queue
    # (on the fast lane the synchronous one is held by a fast-lane thread of A instead).
    wait_until(lambda: queued(r, keys.node_queue(a.name)) == 2, timeout=15,
               message="two calls queued on A")
    hint = sp.execute_in_session_async(s_hint, "sleep", {"seconds": 0.1}, app=app)

    a_runtimes = sigkill_node(a)

    for call in [running, *pinned]:
        with pytest.raises(errors.SessionWorkerUnavailable):
            call.get(timeout=BOUND)
    sync_caller.join(BOUND)
    assert not sync_caller.is_alive(), "a synchronous caller still waits"
    assert isinstance(sync_outcome[0], errors.SessionWorkerUnavailable), sync_outcome
    assert hint.get(timeout=BOUND)["worker_id"].startswith(b.name + "/")

    with pytest.raises(errors.SessionWorkerUnavailable):  # the strict session's worker is gone
        sp.execute_in_session(s_strict, "ping", affinity="strict_queue", timeout=30, app=app)
    moved = sp.execute_in_session(s_hint, "ping", timeout=30, app=app)
    assert_served_by(b, moved)
    info = sessions.get(s_hint, app=app)
    assert info is not None and info["worker"].startswith(b.name + "/")  # re-bound to B
    for pid in a_runtimes:
        wait_until(lambda pid=pid: dead(pid), timeout=15, message=f"A's runtime {pid} gone")


# -- 6. plain calls A had taken --------------------------------------------------------------
def _plain_calls_on_a_killed_node(chaos_node: Any, make_app: Any) -> dict[str, Any]:
    """A and B; B's two Celery threads held by its own session's calls; then three plain idempotent
    calls: ``started`` runs on A, ``taken`` waits in A's second thread, ``pooled`` waits in the
    pool queue. Then A is SIGKILLed."""
    a, b, app = two_nodes(chaos_node, make_app)
    r = redis_of(a)
    s_b = bind_session(app, b, "b")
    blocker = sp.execute_in_session_async(s_b, "sleep", {"seconds": 4},
                                          affinity="strict_queue", app=app)
    wait_busy(b)
    b_pinned = sp.execute_in_session_async(s_b, "ping", affinity="strict_queue", app=app)
    wait_until(lambda: queued(r, keys.node_queue(b.name)) == 0, timeout=15,
               message="B's second thread holding its pinned call")
    pool_queue = keys.pool_queue(a.pool)
    started = sp.execute_async("sleep", {"seconds": 1}, app=app)
    wait_until(lambda: call_state(r, started.id) == f"started:{a.name}", timeout=15,
               message="the first plain call running on A")
    taken = sp.execute_async("sleep", {"seconds": 1}, app=app)
    wait_until(lambda: queued(r, pool_queue) == 0, timeout=15,
               message="the second plain call taken by A's second thread")
    pooled = sp.execute_async("sleep", {"seconds": 1}, app=app)
    wait_until(lambda: queued(r, pool_queue) == 1, timeout=15, message="the third one queued")
    # taken (waiting for a slot on A), not started
    assert (call_state(r, taken.id) or "taken:").startswith("taken:")
    a_runtimes = sigkill_node(a)
    return {"a": a, "b": b, "app": app, "blocker": blocker, "b_pinned": b_pinned,
            "started": started, "taken": taken, "pooled": pooled, "a_runtimes": a_runtimes}


def test_idempotent_calls_a_killed_node_had_started_or_left_queued_complete_on_the_other(
    chaos_node: Any, make_app: Any
) -> None:
    s = _plain_calls_on_a_killed_node(chaos_node, make_app)
    b = s["b"]
    assert s["blocker"].get(timeout=BOUND)["worker_id"].startswith(b.name + "/")
    assert s["b_pinned"].get(timeout=BOUND)["worker_id"].startswith(b.name + "/")
    for name in ("started", "pooled"):
        result = outcome(s[name], timeout=BOUND)
        assert isinstance(result, dict), f"{name}: {result!r}"
        assert result["worker_id"].startswith(b.name + "/"), (name, result)
    for pid in s["a_runtimes"]:
        wait_until(lambda pid=pid: dead(pid), timeout=15, message=f"A's runtime {pid} gone")


def test_a_plain_call_a_killed_node_had_taken_but_not_started_is_not_stranded(
    chaos_node: Any, make_app: Any
) -> None:
    s = _plain_calls_on_a_killed_node(chaos_node, make_app)
    for name in ("blocker", "b_pinned", "started", "pooled"):  # let the others finish first
        outcome(s[name], timeout=BOUND)
    taken = s["taken"]
    try:
        result = capture(lambda: taken.get(timeout=15))
    finally:
        # Stop listening for it while Redis is up (a pending result unsubscribes when collected).
        capture(lambda: s["app"].backend.remove_pending_result(taken))
    r = redis_of(s["b"])
    stuck = any(taken.id in connections.text(v) for v in r.hvals(kombu_redis.UNACKED))
    assert isinstance(result, dict | errors.SnakepitError), (
        f"the call A had taken got no outcome: {result!r} (still in kombu's unacked hash: "
        f"{stuck})")


# -- 7. a node restarted after SIGKILL sweeps its instance's leftovers ------------------------
# Records `pid` in the registry as the node `node_pid` would (the record names the process
# that made it as the node; a record made by the test process itself would name a live node,
# whose runs a sweep rightly leaves alone).
RECORD_AS_NODE = (
    "import os, sys\n"
    "from snakepit_tasks.node.registry import ProcessRegistry\n"
    "data_dir, instance, node_pid, pid, run_id, worker_id, node_name = sys.argv[1:]\n"
    "os.getpid = lambda: int(node_pid)\n"
    "ok = ProcessRegistry(data_dir, instance, '').record(\n"
    "    int(pid), run_id=run_id, worker_id=worker_id, node_name=node_name)\n"
    "sys.exit(0 if ok else 1)\n"
)


class FakeRuntimes:
    """Runtime-like processes started by the test in their own sessions; killed and reaped
    by pid at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, run_id: str, instance: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(300)",
             "--run-id", run_id, "--instance", instance],
            start_new_session=True, stdin=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        wait_until(lambda: "--run-id" in Path(f"/proc/{proc.pid}/cmdline").read_text(),
                   timeout=10, message="the fake runtime started")
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def fakes() -> Iterator[FakeRuntimes]:
    f = FakeRuntimes()
    try:
        yield f
    finally:
        f.close()


def record_as_node(data_dir: Path, instance: str, node: NodeHandle, pid: int, run_id: str,
                   worker_id: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", RECORD_AS_NODE, str(data_dir), instance, str(node.pid), str(pid),
         run_id, worker_id, node.name],
        cwd=REPO, env=subprocess_env(), stdin=subprocess.DEVNULL, capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")


def test_a_node_restarted_after_sigkill_kills_the_leftovers_of_its_instance_only(
    chaos_node: Any, fakes: FakeRuntimes, tmp_path: Path
) -> None:
    data_dir = tmp_path / "registry"
    instance = f"chaos-{uuid.uuid4().hex[:6]}"
    other_instance = f"{instance}-other"
    env = {**NODE_ENV, "SNAKEPIT_DATA_DIR": str(data_dir), "SNAKEPIT_INSTANCE_NAME": instance}
    a = chaos_node(pool_size=1, env=env)
    r = redis_of(a)
    lease = next(n for n in pool_state.live_nodes(r, a.pool) if n["name"] == a.name)
    run_id = lease["run_id"]
    assert lease["instance"] == instance

    # A recorded leftover, one never recorded (found by its command line), and one of another
    # instance (same data dir, same run id even: the instance name is what tells them apart).
    recorded = fakes.spawn(run_id, instance)
    record_as_node(data_dir, instance, a, recorded.pid, run_id, f"{a.name}/9")
    unrecorded = fakes.spawn(run_id, instance)
    other = fakes.spawn(run_id, other_instance)
    record_as_node(data_dir, other_instance, a, other.pid, run_id, f"{a.name}/8")

    a_runtimes = sigkill_node(a)
    for pid in a_runtimes:  # real runtimes die with their node (parent-death signal)
        wait_until(lambda pid=pid: dead(pid), timeout=15, message=f"A's runtime {pid} gone")
    assert recorded.poll() is None and unrecorded.poll() is None and other.poll() is None

    b = chaos_node(pool=a.pool, name=f"{a.pool}-restarted@itest", pool_size=1, env=env)
    wait_until(lambda: recorded.poll() is not None and unrecorded.poll() is not None,
               timeout=30, message="the leftovers of the instance killed by the new node")
    assert other.poll() is None, "a process of another instance must survive the sweep"
    assert not dead(other.pid)
    log = b.output()
    assert str(recorded.pid) in log and str(unrecorded.pid) in log, log[-2000:]
    assert_served_by(b, sp.execute("ping", timeout=30, app=b.app))
