"""broker/fast_send_session.lua on a real Redis (no nodes): a call of a bound session whose
binding this process has seen is routed, checked and pushed in one round trip, to the list,
with the message, error and side effects the two-round-trip path (routing.route, then LPUSH)
gives for the same state. Each decision of the script is compared with that path."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from snakepit_tasks import connections, fast_lane, keys, kombu_redis, resp, routing, telemetry
from snakepit_tasks.call import Call
from snakepit_tasks.config import Settings, load_settings
from snakepit_tasks.errors import (
    CircuitOpen,
    NoWorkersAvailable,
    QueueFull,
    SessionWorkerUnavailable,
    WorkerBusy,
)
from snakepit_tasks.host_tools.context import Serving, serving
from snakepit_tasks.resilience import CircuitBreaker
from snakepit_tasks.resilience.circuit_breaker import Admission

pytestmark = pytest.mark.timeout(120)

MAX_QUEUE = 3
MODES = ("hint", "strict_queue", "strict_fail_fast")


class World:
    """One pool, one node with two workers, one session bound to worker 0: all names unique
    to the test, every key removed at the end."""

    def __init__(self, redis_url: str) -> None:
        tag = uuid.uuid4().hex[:10]
        self.tag = tag
        self.pool = f"fss{tag}"
        self.node = f"{self.pool}@host"
        self.worker = f"{self.node}/0"
        self.sid = f"sess-{tag}"
        self.settings: Settings = load_settings(
            redis_url=redis_url, pools=[{"name": self.pool}], pool_max_queue_size=MAX_QUEUE)
        self.r: Any = connections.redis_client(redis_url)

    def build(self, state: str = "idle", bound: bool = True) -> None:
        """The pool alive, the node leased with its workers, the session bound; ``state``:
        idle, busy, gone (no lease), vanished (no snapshot), tainted."""
        r = self.r
        r.set(keys.pool_alive(self.pool), self.node, px=60_000)
        r.sadd(keys.pools(), self.pool)
        if state != "gone":
            r.hset(keys.node_lease(self.node), mapping={"pool": self.pool})
        for i in range(2):
            worker = f"{self.node}/{i}"
            if state != "vanished" or i:
                r.hset(keys.node_workers(self.node), worker,
                       json.dumps({"id": worker, "capacity": 1, "state": "ready"}))
        if state == "busy":
            r.hset(keys.busy(self.node), self.worker, 1)
        if state == "tainted":
            r.set(keys.taint(self.worker), 1, px=60_000)
        if bound:
            r.hset(keys.session(self.sid), mapping={
                "worker": self.worker, "node": self.node, "pool": self.pool,
                "created": time.time(), "last_used": time.time()})
            r.zadd(keys.sessions(), {self.sid: time.time()})

    def clear(self) -> None:
        names = list(self.r.scan_iter(match=f"*{self.tag}*", count=1000))
        if names:
            self.r.delete(*names)
        self.r.zrem(keys.sessions(), self.sid)
        self.r.srem(keys.pools(), self.pool)
        routing._bindings.pop(self.sid, None)

    def lists(self) -> dict[str, list[bytes]]:
        """Every non-empty list of the pool and the node (fast lane and Celery lane)."""
        names = [keys.fast_pool_queue(self.pool), keys.fast_node_queue(self.node),
                 *kombu_redis.queue_lists(keys.pool_queue(self.pool)),
                 *kombu_redis.queue_lists(keys.node_queue(self.node))]
        return {n: got for n in names if (got := self.r.lrange(n, 0, -1))}


@pytest.fixture
def world(redis_url: str) -> Iterator[World]:
    w = World(redis_url)
    yield w
    w.clear()


@pytest.fixture
def rebounds() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    handler = f"test-rebound-{uuid.uuid4().hex}"
    telemetry.attach(handler, ("snakepit", "session", "rebound"),
                     lambda event, measurements, metadata: seen.append(dict(metadata)))
    yield seen
    telemetry.detach(handler)


class Trips:
    """Round trips to Redis: pipelines executed, commands sent on their own, and lean round
    trips (:func:`snakepit_tasks.resp.round_trip`) on ``r``."""

    def __init__(self, r: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        pipeline, execute_command = r.pipeline, r.execute_command

        def counted_pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = pipeline(*args, **kwargs)
            run = pipe.execute

            def execute(*a: Any, **kw: Any) -> Any:
                self.count += 1
                return run(*a, **kw)

            pipe.execute = execute
            return pipe

        def counted_command(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return execute_command(*args, **kwargs)

        lean = resp.round_trip

        def counted_round_trip(client: Any, *commands: bytes) -> list[Any]:
            if client is r:
                self.count += 1
            return lean(client, *commands)

        monkeypatch.setattr(r, "pipeline", counted_pipeline)
        monkeypatch.setattr(r, "execute_command", counted_command)
        monkeypatch.setattr(resp, "round_trip", counted_round_trip)


def send(world: World, *, fast: bool, mode: str | None = None, block: bool = False,
         admission: Admission | None = None, monkeypatch: pytest.MonkeyPatch,
         **kwargs: Any) -> Any:
    """One fast-lane call of the session: ``fast`` with its binding seen (the script), else
    the long way (routing.route then the push). Returns what it did: the error, or the lists
    it filled, each message decoded without its id."""
    routing._bindings.pop(world.sid, None)
    with monkeypatch.context() as m:
        if fast:
            routing._remember(world.sid, (world.worker, world.node))
            m.setattr(routing, "route", _refused_route)
        else:
            m.setattr(routing, "session_send", lambda settings, call: None)
        wait = time.time() + 0.05 if block else None
        try:
            fast_lane.send(world.settings, ("ping", {"n": 1}),
                           {"session_id": world.sid, "affinity": mode, "reply": True,
                            "deadline": 1e10, "enqueued_at": 1.5e9, **kwargs},
                           admission, wait)
        except Exception as exc:
            return type(exc), str(exc), exc.details if hasattr(exc, "details") else None
    return {name: [_without_id(raw) for raw in raws] for name, raws in world.lists().items()}


def _refused_route(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("routing.route ran: the script should have routed this call")


def _without_id(raw: bytes) -> dict[str, Any]:
    message = json.loads(raw)
    assert message.pop("id")
    return message


def both(world: World, monkeypatch: pytest.MonkeyPatch, state: str, mode: str | None,
         **kw: Any) -> tuple[Any, Any, Any]:
    """The same call, in the same state, both ways: (script, long way, session after the
    script)."""
    world.build(state)
    fast = send(world, fast=True, mode=mode, monkeypatch=monkeypatch, **kw)
    session_after = world.r.hget(keys.session(world.sid), "worker")
    world.clear()
    world.build(state)
    slow = send(world, fast=False, mode=mode, monkeypatch=monkeypatch, **kw)
    assert world.r.hget(keys.session(world.sid), "worker") == session_after
    return fast, slow, session_after


# -- each decision, the same both ways -------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_bound_idle_worker_gets_the_call_in_its_node_list(
    world: World, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    fast, slow, bound = both(world, monkeypatch, "idle", mode)
    assert fast == slow
    (message,) = fast[keys.fast_node_queue(world.node)]
    assert message["call"]["worker"] == world.worker
    assert message["call"]["fallback"] is False
    assert message["call"]["affinity"] == mode
    assert bound == world.worker.encode()


def test_bound_busy_worker_hint_falls_back_to_the_pool_and_keeps_the_binding(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, slow, bound = both(world, monkeypatch, "busy", "hint")
    assert fast == slow
    (message,) = fast[keys.fast_pool_queue(world.pool)]
    assert message["call"]["fallback"] is True and message["call"]["worker"] is None
    assert bound == world.worker.encode()


def test_bound_busy_worker_strict_queue_waits_in_its_node_list(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, slow, _ = both(world, monkeypatch, "busy", "strict_queue")
    assert fast == slow
    (message,) = fast[keys.fast_node_queue(world.node)]
    assert message["call"]["worker"] == world.worker


def test_bound_busy_worker_strict_fail_fast_is_worker_busy(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, slow, _ = both(world, monkeypatch, "busy", "strict_fail_fast")
    assert fast == slow
    assert fast[0] is WorkerBusy
    assert world.lists() == {}


@pytest.mark.parametrize("state", ["gone", "vanished", "tainted"])
@pytest.mark.parametrize("mode", ["strict_queue", "strict_fail_fast"])
def test_strict_modes_refuse_a_gone_or_tainted_worker(
    world: World, monkeypatch: pytest.MonkeyPatch, state: str, mode: str
) -> None:
    fast, slow, bound = both(world, monkeypatch, state, mode)
    assert fast == slow
    error, message, details = fast
    assert error is SessionWorkerUnavailable
    why = "tainted after a crash" if state == "tainted" else "gone"
    assert f"which is {why} (affinity {mode})" in message
    assert details == {"session_id": world.sid, "worker_id": world.worker, "node": world.node}
    assert bound == world.worker.encode(), "a strict mode keeps the binding"


@pytest.mark.parametrize("state", ["gone", "vanished", "tainted"])
def test_hint_rebinds_away_from_a_gone_or_tainted_worker(
    world: World, monkeypatch: pytest.MonkeyPatch, rebounds: list[dict[str, Any]], state: str
) -> None:
    fast, slow, bound = both(world, monkeypatch, state, "hint")
    assert fast == slow
    (message,) = fast[keys.fast_pool_queue(world.pool)]
    assert message["call"]["worker"] is None and message["call"]["fallback"] is False
    assert bound is None
    assert world.r.zscore(keys.sessions(), world.sid) is None
    why = "tainted after a crash" if state == "tainted" else "gone"
    expected = {"session_id": world.sid, "pool": world.pool, "worker_id": world.worker,
                "reason": why}
    assert rebounds == [expected, expected]  # once per way
    assert world.sid not in routing._bindings


@pytest.mark.parametrize(("state", "mode", "where"), [
    ("idle", "hint", "node"), ("busy", "strict_queue", "node"), ("busy", "hint", "pool"),
    ("tainted", "hint", "pool"),
])
def test_queue_full_where_the_call_would_go(
    world: World, monkeypatch: pytest.MonkeyPatch, state: str, mode: str, where: str
) -> None:
    full = (keys.node_queue(world.node) if where == "node" else keys.pool_queue(world.pool))
    fast_full = (keys.fast_node_queue(world.node) if where == "node"
                 else keys.fast_pool_queue(world.pool))
    results = []
    for fast in (True, False):
        world.build(state)
        world.r.rpush(full, b"celery")
        world.r.rpush(fast_full, *[b"fast"] * (MAX_QUEUE - 1))
        results.append(send(world, fast=fast, mode=mode, monkeypatch=monkeypatch))
        saturated = world.r.hget(keys.pool_stats(world.pool), "pool_saturated")
        assert saturated == b"1"
        world.clear()
    assert results[0] == results[1]
    error, message, details = results[0]
    assert error is QueueFull
    assert f"{MAX_QUEUE} calls already wait in {full}" in message
    assert details == {"pool": world.pool, "queued": MAX_QUEUE}


def test_a_full_other_destination_does_not_refuse(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.build("idle")
    world.r.rpush(keys.fast_pool_queue(world.pool), *[b"fast"] * MAX_QUEUE)
    routing._remember(world.sid, (world.worker, world.node))
    monkeypatch.setattr(routing, "route", _refused_route)
    fast_lane.send(world.settings, ("ping", {}), {"session_id": world.sid}, None, None)
    assert world.r.llen(keys.fast_node_queue(world.node)) == 1


def test_no_live_node_for_the_pool(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.build("idle")
    world.r.delete(keys.pool_alive(world.pool))
    fast = send(world, fast=True, mode="hint", monkeypatch=monkeypatch)
    slow = send(world, fast=False, mode="hint", monkeypatch=monkeypatch)
    assert fast == slow and fast[0] is NoWorkersAvailable
    assert world.lists() == {}


def test_circuit_open_refuses_before_anything_else(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.build("tainted")  # would rebind under hint: not while the circuit is open
    breaker = CircuitBreaker(world.pool, redis=world.r, failure_threshold=1,
                             reset_timeout_ms=60_000)
    breaker.record_failure()
    fast = send(world, fast=True, mode="hint", admission=Admission(breaker),
                monkeypatch=monkeypatch)
    slow = send(world, fast=False, mode="hint", admission=Admission(breaker),
                monkeypatch=monkeypatch)
    assert fast[0] is CircuitOpen and slow[0] is CircuitOpen
    assert fast[1].split(" for another")[0] == slow[1].split(" for another")[0]
    assert world.r.hget(keys.session(world.sid), "worker") == world.worker.encode()
    assert world.lists() == {}


def test_an_admitted_call_is_recorded_by_the_breaker(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.build("busy")
    breaker = CircuitBreaker(world.pool, redis=world.r, failure_threshold=1,
                             reset_timeout_ms=60_000)
    admission = Admission(breaker)
    got = send(world, fast=True, mode="strict_fail_fast", admission=admission,
               monkeypatch=monkeypatch)
    assert got[0] is WorkerBusy
    assert admission.admitted  # admitted in the script: the caller records its outcome
    assert breaker.state == "closed"


# -- the binding the script was told is not the one in Redis ------------------------------


def test_a_changed_binding_goes_the_long_way_with_the_new_binding(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.build("idle")
    other = f"{world.node}/1"
    world.r.hset(keys.session(world.sid), "worker", other)
    routing._remember(world.sid, (world.worker, world.node))
    routed: list[str] = []
    route = routing.route

    def spied(settings: Settings, call: Call, admission: Any = None) -> Any:
        routed.append(routing._bindings.get(world.sid, ("", ""))[0])
        return route(settings, call, admission)

    monkeypatch.setattr(routing, "route", spied)
    fast_lane.send(world.settings, ("ping", {}), {"session_id": world.sid}, None,
                   time.time() + 0.05)
    assert routed == [other], "routed the long way, the binding found remembered"
    (raw,) = world.lists()[keys.fast_node_queue(world.node)]
    assert json.loads(raw)["call"]["worker"] == other
    assert routing._bindings[world.sid] == (other, world.node)


def test_an_unbound_session_goes_the_long_way_to_the_pool(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.build("idle", bound=False)
    routing._remember(world.sid, (world.worker, world.node))
    fast_lane.send(world.settings, ("ping", {}), {"session_id": world.sid}, None, None)
    (raw,) = world.lists()[keys.fast_pool_queue(world.pool)]
    assert json.loads(raw)["call"]["worker"] is None
    assert world.sid not in routing._bindings


def test_a_changed_binding_leaves_no_refusal_behind(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script pushed 'refused' for the BLPOP behind it; the BLPOP took it, and the long
    way's own wait sees only the real reply."""
    world.build("idle")
    world.r.hset(keys.session(world.sid), "worker", f"{world.node}/1")
    routing._remember(world.sid, (world.worker, world.node))
    call_ids: list[str] = []
    encode = fast_lane.encode

    def spied(call_id: str, call: Call, trace: Any = None) -> bytes:
        call_ids.append(call_id)
        return encode(call_id, call, trace)

    monkeypatch.setattr(fast_lane, "encode", spied)
    call_id, body = fast_lane.send(world.settings, ("ping", {}), {"session_id": world.sid},
                                   None, time.time() + 0.05)
    assert body is None, "no reply: nothing runs the call"
    assert call_ids == [call_id]
    assert not world.r.exists(keys.reply(call_id))


# -- one round trip, and the refusal that ends the BLPOP at once -----------------------------


def test_a_bound_call_costs_one_round_trip(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.build("idle")
    trips = Trips(world.r, monkeypatch)
    routing._remember(world.sid, (world.worker, world.node))
    monkeypatch.setattr(routing, "route", _refused_route)
    fast_lane.send(world.settings, ("ping", {}), {"session_id": world.sid}, None,
                   time.time() + 0.05)
    assert trips.count == 1
    assert len(world.lists()[keys.fast_node_queue(world.node)]) == 1


@pytest.mark.parametrize(("state", "mode", "error"), [
    ("busy", "strict_fail_fast", WorkerBusy),
    ("tainted", "strict_queue", SessionWorkerUnavailable),
])
def test_a_refused_call_does_not_wait_for_a_reply(
    world: World, monkeypatch: pytest.MonkeyPatch, state: str, mode: str, error: type
) -> None:
    world.build(state)
    routing._remember(world.sid, (world.worker, world.node))
    began = time.monotonic()
    with pytest.raises(error):
        fast_lane.send(world.settings, ("ping", {}), {"session_id": world.sid,
                                                      "affinity": mode}, None,
                       time.time() + 60)
    assert time.monotonic() - began < 30, "the BLPOP behind the script returned at once"


def test_the_reply_comes_back_in_the_same_round_trip(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that answers at once: the BLPOP riding behind the script gets the reply."""
    world.build("idle")
    routing._remember(world.sid, (world.worker, world.node))

    def node() -> None:
        got = world.r.brpop([keys.fast_node_queue(world.node)], timeout=10)
        world.r.lpush(keys.reply(json.loads(got[1])["id"]), b'{"ok":true,"result":"pong"}')

    t = threading.Thread(target=node)
    t.start()
    _, body = fast_lane.send(world.settings, ("ping", {}), {"session_id": world.sid}, None,
                             time.time() + 10)
    t.join()
    assert body == b'{"ok":true,"result":"pong"}'


# -- host-tool re-entry ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("state", ["idle", "busy"])
def test_a_call_from_a_host_tool_of_the_busy_bound_worker(
    world: World, monkeypatch: pytest.MonkeyPatch, mode: str, state: str
) -> None:
    """From inside a host tool the bound worker waits for: strict modes refuse a busy worker
    with the re-entry error (both ways the same); hint falls back; idle is served."""
    with serving(Serving(session_id=world.sid, tool="lookup", worker_id=world.worker,
                         capacity=1)):
        fast, slow, _ = both(world, monkeypatch, state, mode)
    assert fast == slow
    if state == "busy" and mode != "hint":
        assert fast[0] is WorkerBusy and "re-entrant call" in fast[1]
        assert fast[2]["reason"] == "reentrant"
    else:
        assert isinstance(fast, dict) and fast


# -- the message ---------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [
    {}, {"timeout": 5.0}, {"stream": True, "requires": ["cpu"]},
    {"args": {"worker": "x", "fallback": False, "text": "é ✓"}},
    {"session_id": "séance", "args": {"b": b"\x00\x01"}},
])
@pytest.mark.parametrize(("worker", "fallback"), [("p@h/0", False), (None, True), (None, False)])
@pytest.mark.parametrize("trace", [None, {"traceparent": "00-abc-def-01"}])
def test_the_parts_join_into_the_message_encode_writes(
    fields: dict[str, Any], worker: str | None, fallback: bool, trace: dict[str, str] | None
) -> None:
    call = Call(command="ping", pool="p", deadline=1e10, enqueued_at=1.5e9, session_id="s",
                affinity="hint", reply=True).replace(**fields)
    head, tail = fast_lane.encode_parts("id-1", call, trace)
    joined = head + fast_lane.encode_middle(worker, fallback) + tail
    whole = fast_lane.encode("id-1", call.replace(worker=worker, fallback=fallback), trace)
    assert fast_lane.decode_traced(joined) == fast_lane.decode_traced(whole)
    if not any(ord(c) > 127 for c in json.dumps(fields, default=str)):
        assert joined == whole


def test_a_worker_state_no_node_writes_goes_the_long_way(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot that is not JSON: the script does nothing, routing says what it is."""
    world.build("idle")
    world.r.hset(keys.node_workers(world.node), world.worker, b"not json")
    routing._remember(world.sid, (world.worker, world.node))
    breaker = CircuitBreaker(world.pool, redis=world.r, failure_threshold=1,
                             reset_timeout_ms=60_000)
    admitted: list[str] = []
    route = routing.route

    def spied(settings: Settings, call: Call, admission: Any = None) -> Any:
        admitted.append(admission.op if admission is not None else "")
        return route(settings, call, admission)

    monkeypatch.setattr(routing, "route", spied)
    with pytest.raises(ValueError):
        fast_lane.send(world.settings, ("ping", {}), {"session_id": world.sid},
                       Admission(breaker), time.time() + 0.05)
    assert admitted == ["admit"], "the long way admits it: the script did not"
    assert world.lists() == {}
