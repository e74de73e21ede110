"""Chaos: a plain call re-routed twice while it waits for a slot gets its real result.

Three nodes of one pool, two workers each (four Celery threads). A's workers run two
``hold`` calls (busy until a file exists; not idempotent) and A's two other threads hold two
``record`` calls, one sent with ``execute_async`` and one with ``execute``, waiting for a slot
(``taken:A``). A is SIGKILLed: the janitor on B re-routes both to the pool queue, where B's
two free threads take them and wait again (B's workers hold too). B is SIGKILLed: the janitor
on C re-routes them again, C's free threads wait for C's workers while janitor sweeps go by,
the test releases C's holds, and the calls run. Each caller gets the tool's real result, once;
the result backend agrees; the tool ran exactly once per call (the recording tool appends the
call id to a file on every run); the holds of the dead nodes fail with WorkerCrashed; the
counters match what the callers saw.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import RECORDING, WHOAMI_ENV, NodeHandle, pool_table, unique_pool, wait_until

import snakepit_tasks as sp
from snakepit_tasks import connections, errors, keys, kombu_redis

from .test_chaos_support import (
    busy_workers,
    chaos_nodes,
    dead,
    outcome,
    redis_of,
    start_serving,
)

pytestmark = pytest.mark.timeout(240)

QUEUE_TIMEOUT_MS = 120_000  # calls wait for a slot as long as the test needs
NODE_ENV = {"SNAKEPIT_POOL_QUEUE_TIMEOUT": str(QUEUE_TIMEOUT_MS)}
WORKERS = 2
BOUND = 60.0  # seconds within which every caller must hear its outcome


@pytest.fixture
def chaos_node(node: Any, pids: Any, tmp_path: Path) -> Iterator[Any]:
    yield from chaos_nodes(node, pids, tmp_path)


def call_state(r: Any, call_id: str) -> str:
    raw = r.get(keys.call_state(call_id))
    return connections.text(raw) if raw is not None else ""


def taken_by(r: Any, node: NodeHandle) -> set[str]:
    """Ids of the calls ``node`` holds waiting for a slot."""
    mark = f"taken:{node.name}"
    return {
        connections.text(k).rsplit(":", 1)[-1]
        for k in r.scan_iter(match=keys.call_state("*"), count=1000)
        if call_state(r, connections.text(k).rsplit(":", 1)[-1]) == mark
    }


def runs(path: Path) -> list[str]:
    """The call ids the recording tool saw, one per run."""
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def kill(n: NodeHandle) -> list[int]:
    runtimes = n.worker_pids()
    os.kill(n.pid, signal.SIGKILL)
    n.proc.wait(10)
    return runtimes


def anywhere(r: Any, call_id: str, queues: list[str]) -> list[str]:
    """Where a message of ``call_id`` still sits: kombu's unacked hash or one of ``queues``."""
    found = ["unacked"] if any(
        call_id in connections.text(v) for v in r.hvals(kombu_redis.UNACKED)) else []
    for q in queues:
        if any(call_id in connections.text(m) for m in r.lrange(q, 0, -1)):
            found.append(q)
    return found


def test_a_call_re_routed_twice_while_waiting_for_a_slot_gets_its_real_result(
    chaos_node: Any, make_app: Any, tmp_path: Path
) -> None:
    pool = unique_pool("rr")
    fields = {"adapter": RECORDING, "adapter_env": WHOAMI_ENV}
    # Celery lane for the synchronous call too: only it holds a call in a thread waiting for
    # a slot (the fast lane takes a call when a slot is free; its recovery is tested in
    # tests/integration/test_fast_lane.py).
    app = make_app(pool_table(pool, pool_size=WORKERS, **fields),
                   pool_queue_timeout=QUEUE_TIMEOUT_MS, fast_lane=False)
    log = tmp_path / "runs.txt"

    def start(name: str) -> NodeHandle:
        return start_serving(chaos_node, app, WORKERS, pool=pool, name=f"{pool}-{name}@itest",
                             env=NODE_ENV, **fields)

    def block(n: NodeHandle, flag: Path) -> list[Any]:
        """Both workers of ``n`` busy until ``flag`` exists (sent to the pool queue: only
        ``n`` has free threads)."""
        holds = [sp.execute_async("hold", {"flag": str(flag)}, timeout=180, app=app)
                 for _ in range(WORKERS)]
        wait_until(lambda: len(busy_workers(n)) == WORKERS, timeout=30,
                   message=f"both workers of {n.name} busy")
        return holds

    a = start("a")
    r = redis_of(a)
    holds_a = block(a, tmp_path / "never")

    # The two calls under test, held by A's two free threads waiting for a slot.
    sent = sp.execute_async("record", {"runs": str(log), "value": "async"}, timeout=180, app=app)
    sync_got: list[Any] = []

    def sync_call() -> None:
        try:
            sync_got.append(sp.execute("record", {"runs": str(log), "value": "sync"},
                                       timeout=180, app=app))
        except Exception as exc:  # inspected below, raw exceptions included
            sync_got.append(exc)

    caller = threading.Thread(target=sync_call, name="sync-caller")
    caller.start()
    def both_held() -> set[str] | None:
        held = taken_by(r, a)
        return held if len(held) == 2 else None

    held = wait_until(both_held, timeout=30, message="A holding both calls waiting for a slot")
    assert sent.id in held
    (sync_id,) = held - {sent.id}
    ids = {sent.id, sync_id}

    b = start("b")
    holds_b = block(b, tmp_path / "never")
    a_runtimes = kill(a)
    wait_until(lambda: taken_by(r, b) == ids, timeout=BOUND,
               message=lambda: f"B holding both calls after A's death: "
                               f"{ {i: call_state(r, i) for i in ids} }")

    c = start("c")
    release_c = tmp_path / "release-c"
    holds_c = block(c, release_c)
    b_runtimes = kill(b)
    wait_until(lambda: taken_by(r, c) == ids, timeout=BOUND,
               message=lambda: f"C holding both calls after B's death: "
                               f"{ {i: call_state(r, i) for i in ids} }")
    time.sleep(2)  # janitor sweeps while C holds them: they must stay C's
    assert taken_by(r, c) == ids
    release_c.touch()

    result = outcome(sent, timeout=BOUND)
    caller.join(BOUND)
    assert not caller.is_alive(), "the synchronous caller still waits"
    got = {sent.id: result, sync_id: sync_got[0]}
    for how, call_id in (("async", sent.id), ("sync", sync_id)):
        res = got[call_id]
        assert isinstance(res, dict), f"{how} call: {res!r}"
        assert res["call_id"] == call_id and res["value"] == how, res
        assert res["worker_id"].startswith(c.name + "/"), res
        assert call_state(r, call_id) == f"done:{c.name}"

    # The backend says the same (the async call); the synchronous one left no contrary entry.
    assert app.AsyncResult(sent.id).state == "SUCCESS"
    assert app.AsyncResult(sent.id).result == result
    assert app.AsyncResult(sync_id).state in ("PENDING", "SUCCESS")
    for hold in holds_a + holds_b:
        assert isinstance(outcome(hold, timeout=BOUND), errors.WorkerCrashed)
    for hold in holds_c:
        assert outcome(hold, timeout=BOUND)["released"] is True

    # Exactly one run each, also after more janitor sweeps; no copy left anywhere.
    time.sleep(3)
    assert sorted(runs(log)) == sorted(ids), runs(log)
    queues = [keys.pool_queue(pool), *(keys.node_queue(n.name) for n in (a, b, c))]
    for call_id in ids:
        assert not anywhere(r, call_id, queues), call_id
    stats = sp.get_stats(pool, app=app)
    # C finished 4 calls (2 holds, 2 records); the janitor failed the 4 holds of A and B.
    assert (stats["requests"], stats["errors"], stats["queue_timeouts"]) == (4, 4, 0), stats
    for pid in a_runtimes + b_runtimes:
        wait_until(lambda pid=pid: dead(pid), timeout=15, message=f"runtime {pid} gone")
