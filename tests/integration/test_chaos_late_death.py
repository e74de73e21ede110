"""Chaos in the windows a signal cannot hit on purpose: a node that dies right after it
pulled a message from its queue (before it marked the call), or right after a call's outcome
was out (before kombu acknowledged its message).

Both deaths are staged: a real node A serves the pool; a message is put into kombu's unacked
hash as if a node "ghost" had pulled it and died (a member of the pool with no lease, and the
call state it would have left). The janitor on A takes over the ghost's messages. A call that
was only pulled must be re-routed and run once; a call that had its outcome must keep it: no
second direct reply, no failure over a stored SUCCESS, and for a stream whose result never
reached the backend, the stream's own final result stored there.

Also staged: messages a dead node's intake had taken into its own lists (never reached
Celery) run once; a node restarted under its own name settles what its killed previous run
held (taken: run; started, not idempotent: WorkerCrashed, not run again).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import RECORDING, WHOAMI_ENV, NodeHandle, pool_table, unique_pool, wait_until

import snakepit_tasks as sp
from snakepit_tasks import connections, errors, keys, kombu_redis

from .test_chaos_support import chaos_nodes, redis_of, start_serving

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def chaos_node(node: Any, pids: Any, tmp_path: Path) -> Iterator[Any]:
    yield from chaos_nodes(node, pids, tmp_path)


def held_entry(r: Any, tag: str) -> tuple[bytes, bytes] | None:
    """(delivery tag, entry) of the unacknowledged message whose call carries ``tag``."""
    for delivery, entry in r.hgetall(kombu_redis.UNACKED).items():
        message = json.loads(kombu_redis.unacked_message(entry))
        if tag in base64.b64decode(message["body"]).decode():
            return bytes(delivery), bytes(entry)
    return None


class Ghost:
    """A dead node of the pool that held some messages."""

    def __init__(self, n: NodeHandle) -> None:
        self.node = n
        self.r = redis_of(n)
        self.name = f"{n.pool}-ghost@itest"

    def held(self, call_id: str, delivery: bytes, entry: bytes, state: str | None) -> None:
        """Put the message in kombu's unacked hash as the ghost's, with call state ``state``
        (of A) as its (None: no state)."""
        r = self.r
        if state is None:
            r.delete(keys.call_state(call_id))
        else:
            r.set(keys.call_state(call_id), state.replace(self.node.name, self.name),
                  px=120_000)
        r.hset(kombu_redis.UNACKED, delivery, entry)
        r.zadd(kombu_redis.UNACKED_INDEX, {delivery: time.time() - 60})

    def dies(self) -> None:
        self.r.sadd(keys.pool_nodes(self.node.pool), self.name)

    def swept(self, delivery: bytes) -> None:
        wait_until(lambda: not self.r.hexists(kombu_redis.UNACKED, delivery), timeout=30,
                   message="the janitor taking over the ghost's message")
        time.sleep(2)  # more sweeps: nothing more may happen

    def forget(self) -> None:
        self.r.srem(keys.pool_nodes(self.node.pool), self.name)
        self.r.hdel(keys.dead_nodes(self.node.pool), self.name)
        self.r.hdel(keys.dead_backlog(self.node.pool), self.name)


def stored(app: Any, call_id: str) -> tuple[str, Any]:
    """State and result of a call in the result backend (never a cached copy)."""
    meta = app.backend.get_task_meta(call_id, cache=False)
    return meta["status"], meta["result"]


def state_of(r: Any, call_id: str) -> str:
    raw = r.get(keys.call_state(call_id))
    return connections.text(raw) if raw is not None else ""


def test_calls_whose_node_died_after_their_outcome_keep_that_one_outcome(
    chaos_node: Any, make_app: Any, tmp_path: Path
) -> None:
    pool = unique_pool("ld")
    fields = {"adapter": RECORDING, "adapter_env": WHOAMI_ENV}
    # Celery lane for the synchronous call too: the test catches messages in kombu's unacked
    # hash (the fast lane's recovery is tests/integration/test_fast_lane.py's).
    app = make_app(pool_table(pool, **fields), fast_lane=False)
    a = start_serving(chaos_node, app, 1, pool=pool, **fields)
    r = redis_of(a)
    log = tmp_path / "runs.txt"
    record = {"runs": str(log), "seconds": 1.0}

    # An execute_async call, a synchronous one and a stream, each caught while it runs.
    sent = sp.execute_async("record", {**record, "value": "async"}, timeout=60, app=app)
    async_held = wait_until(lambda: held_entry(r, '"async"'), timeout=30,
                            message="the async call delivered")
    async_result = sent.get(timeout=30)

    sync_got: list[Any] = []
    caller = threading.Thread(target=lambda: sync_got.append(
        sp.execute("record", {**record, "value": "sync"}, timeout=60, app=app)))
    caller.start()
    sync_held = wait_until(lambda: held_entry(r, '"sync"'), timeout=30,
                           message="the sync call delivered")
    caller.join(30)
    sync_result = sync_got[0]

    stream = sp.stream("record_stream", {"runs": str(log), "value": "stream", "n": 3,
                                         "delay": 0.4}, timeout=60, app=app)
    stream_held = wait_until(lambda: held_entry(r, '"stream"'), timeout=30,
                             message="the stream delivered")
    chunks = [c["i"] for c in stream]
    stream_result = stream.result
    assert chunks == [1, 2, 3] and stream_result["count"] == 3
    wait_until(lambda: stored(app, stream.id)[0] == "SUCCESS", timeout=15,
               message="the stream's result stored")

    ids = {"async": sent.id, "sync": sync_result["call_id"], "stream": stream.id}
    for what, call_id in ids.items():
        assert state_of(r, call_id) == f"done:{a.name}", what

    ghost = Ghost(a)
    try:
        ghost.held(ids["async"], *async_held, state_of(r, ids["async"]))
        ghost.held(ids["sync"], *sync_held, state_of(r, ids["sync"]))
        # The stream's node died after its final entry, before its end was recorded and
        # before Celery stored the result.
        ghost.held(ids["stream"], *stream_held, f"started:{a.name}")
        r.delete(app.backend.get_key_for_task(ids["stream"]))
        stream_entries = r.xlen(keys.stream(ids["stream"]))
        ghost.dies()
        for held in (async_held, sync_held, stream_held):
            ghost.swept(held[0])

        assert stored(app, ids["async"]) == ("SUCCESS", async_result)
        assert not r.exists(keys.reply(ids["sync"])), "a second reply for the synchronous call"
        assert stored(app, ids["sync"])[0] == "PENDING"  # it never used the backend
        assert stored(app, ids["stream"]) == ("SUCCESS", stream_result)
        assert r.xlen(keys.stream(ids["stream"])) == stream_entries, "an entry after the final"
        runs = [line.split()[0] for line in log.read_text().splitlines()]
        assert sorted(runs) == sorted(ids.values())  # once each, none re-run
        assert sp.get_stats(pool, app=app)["errors"] == 0
    finally:
        ghost.forget()


@dataclass
class BusyNode:
    """A node of one worker of the recording adapter, its worker held by a ``hold`` call and
    its second thread waiting with a ``record`` call (taken, not started): a call sent now
    stays in the pool queue. ``release`` (a file) ends the hold."""

    node: NodeHandle
    r: Any
    app: Any
    queue: str
    log: Path
    release: Path
    hold: Any
    waiting: Any


def busy_node(chaos_node: Any, make_app: Any, tmp_path: Path) -> BusyNode:
    pool = unique_pool("ld")
    fields = {"adapter": RECORDING, "adapter_env": WHOAMI_ENV}
    app = make_app(pool_table(pool, **fields), pool_queue_timeout=60_000)
    a = start_serving(chaos_node, app, 1, pool=pool, env={"SNAKEPIT_POOL_QUEUE_TIMEOUT": "60000"},
                      **fields)
    r = redis_of(a)
    log, release = tmp_path / "runs.txt", tmp_path / "release"
    queue = keys.pool_queue(pool)
    hold = sp.execute_async("hold", {"flag": str(release)}, timeout=60, app=app)
    waiting = sp.execute_async("record", {"runs": str(log), "value": "waiting"}, timeout=60,
                               app=app)
    wait_until(lambda: state_of(r, waiting.id) == f"taken:{a.name}", timeout=30,
               message="A's second thread waiting with a call")
    return BusyNode(a, r, app, queue, log, release, hold, waiting)


def test_a_message_a_node_pulled_but_died_before_marking_is_re_routed(
    chaos_node: Any, make_app: Any, tmp_path: Path
) -> None:
    busy = busy_node(chaos_node, make_app, tmp_path)
    a, r, app, queue = busy.node, busy.r, busy.app, busy.queue
    log, release, hold, waiting = busy.log, busy.release, busy.hold, busy.waiting

    # A's worker held, A's second thread waiting with one call: the next stays in the queue.
    pulled = sp.execute_async("record", {"runs": str(log), "value": "pulled"}, timeout=60,
                              app=app)
    raw = wait_until(lambda: r.rpop(queue), timeout=30, message="the call in the pool queue")

    # The ghost pulled it (kombu moved it to the unacked hash) and died before marking it.
    ghost = Ghost(a)
    delivery = b"ghost-delivery-" + pulled.id.encode()
    try:
        entry = json.dumps([json.loads(raw), keys.EXCHANGE, queue]).encode()
        ghost.held(pulled.id, delivery, entry, None)
        ghost.dies()
        ghost.swept(delivery)
        release.touch()
        assert hold.get(timeout=30)["released"] is True
        assert waiting.get(timeout=30)["value"] == "waiting"
        result = pulled.get(timeout=30)
        assert result["call_id"] == pulled.id and result["value"] == "pulled"
        runs = [line.split()[0] for line in log.read_text().splitlines()]
        assert sorted(runs) == sorted([waiting.id, pulled.id])
    finally:
        release.touch()
        ghost.forget()


def test_messages_a_dead_node_had_taken_into_its_intake_lists_run_once(
    chaos_node: Any, make_app: Any, tmp_path: Path
) -> None:
    busy = busy_node(chaos_node, make_app, tmp_path)
    a, r, app, queue = busy.node, busy.r, busy.app, busy.queue
    log, release, hold, waiting = busy.log, busy.release, busy.hold, busy.waiting

    # A busy, so the next calls stay in the pool queue until the ghost "takes" them.
    ghost = Ghost(a)
    lists = [keys.intake_feeding(ghost.name, queue), keys.intake_staging(ghost.name),
             keys.intake_pulled(ghost.name)]
    sent = []
    try:
        for i, key in enumerate(lists):
            call = sp.execute_async("record", {"runs": str(log), "value": f"taken-{i}"},
                                    timeout=60, app=app)
            wait_until(lambda key=key: r.lmove(queue, key, "RIGHT", "LEFT"), timeout=30,
                       message="the call in the pool queue")
            sent.append(call)
        ghost.dies()
        wait_until(lambda: not any(r.exists(k) for k in lists), timeout=30,
                   message="the janitor taking over the ghost's intake lists")
        release.touch()
        assert hold.get(timeout=30)["released"] is True
        assert waiting.get(timeout=30)["value"] == "waiting"
        for i, call in enumerate(sent):
            result = call.get(timeout=30)
            assert result["call_id"] == call.id and result["value"] == f"taken-{i}"
        runs = [line.split()[0] for line in log.read_text().splitlines()]
        assert sorted(runs) == sorted([waiting.id, *(c.id for c in sent)])  # once each
    finally:
        release.touch()
        ghost.forget()


def test_a_node_restarted_under_its_own_name_settles_its_previous_runs_calls(
    chaos_node: Any, make_app: Any, tmp_path: Path
) -> None:
    """The pool's janitor never sees such a node dead (its lease may not even lapse): the
    node itself puts back what its previous run had taken but not started, and fails (once)
    the call that run had started, before it consumes anything."""
    pool = unique_pool("ld")
    fields = {"adapter": RECORDING, "adapter_env": WHOAMI_ENV}
    env = {"SNAKEPIT_POOL_QUEUE_TIMEOUT": "60000"}
    app = make_app(pool_table(pool, **fields), pool_queue_timeout=60_000)
    name = f"{pool}-a@itest"
    a = start_serving(chaos_node, app, 1, pool=pool, name=name, env=env, **fields)
    r = redis_of(a)
    log = tmp_path / "runs.txt"
    queue = keys.pool_queue(pool)
    os.kill(a.pid, signal.SIGKILL)
    a.proc.wait(10)

    # What the killed run held: one message in its pulled list (taken, never reached Celery),
    # one delivered and started (kombu's unacked hash, call state started:<node>).
    taken = sp.execute_async("record", {"runs": str(log), "value": "taken"}, timeout=60,
                             app=app)
    wait_until(lambda: r.lmove(queue, keys.intake_pulled(name), "RIGHT", "LEFT"), timeout=30,
               message="the taken call in the pool queue")
    started = sp.execute_async("record", {"runs": str(log), "value": "started"}, timeout=60,
                               app=app)
    raw = wait_until(lambda: r.rpop(queue), timeout=30, message="the started call queued")
    delivery = b"previous-run-" + started.id.encode()
    r.hset(kombu_redis.UNACKED, delivery, json.dumps([json.loads(raw), keys.EXCHANGE, queue]))
    r.zadd(kombu_redis.UNACKED_INDEX, {delivery: time.time() - 30})
    r.set(keys.call_state(started.id), f"started:{name}", px=120_000)

    start_serving(chaos_node, app, 1, pool=pool, name=name, env=env, **fields)
    result = taken.get(timeout=30)
    assert result["call_id"] == taken.id and result["value"] == "taken"
    with pytest.raises(errors.WorkerCrashed):
        started.get(timeout=30)
    assert not r.hexists(kombu_redis.UNACKED, delivery)
    assert not r.exists(keys.intake_pulled(name))
    runs = [line.split()[0] for line in log.read_text().splitlines()]
    assert runs == [taken.id]  # the started call is not run again (not idempotent)
