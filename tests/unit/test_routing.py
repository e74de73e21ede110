"""snakepit_tasks.routing: validation before anything is sent, and the queue a call takes."""

from __future__ import annotations

import json
import time
from typing import Any

import fakeredis
import pytest

from snakepit_tasks import keys, routing
from snakepit_tasks.config import Settings, load_settings
from snakepit_tasks.errors import (
    ConfigurationError,
    NoWorkersAvailable,
    PoolNotFound,
    QueueFull,
    SerializationError,
    SessionWorkerUnavailable,
    WorkerBusy,
)

NODE = "a@host1"
WORKER = "a@host1/0"


@pytest.fixture
def settings() -> Settings:
    return load_settings(
        redis_url="redis://unit-test/0",
        pools=[{"name": "a"}, {"name": "b", "affinity": "strict_queue"}],
        pool_max_queue_size=5,
    )


@pytest.fixture
def r(fake_redis: fakeredis.FakeRedis) -> fakeredis.FakeRedis:
    return fake_redis


def make_alive(r: fakeredis.FakeRedis, pool: str, node: str = NODE) -> None:
    r.set(keys.pool_alive(pool), node, px=60_000)
    r.sadd(keys.pools(), pool)


# -- prepare: validation -------------------------------------------------------------------


@pytest.mark.parametrize("command", [None, "", 3, ["ping"], b"ping"])
def test_prepare_rejects_bad_command(
    settings: Settings, r: fakeredis.FakeRedis, command: Any
) -> None:
    make_alive(r, "a")
    with pytest.raises(SerializationError, match="non-empty string"):
        routing.prepare(settings, (command,), {})


@pytest.mark.parametrize("args", [[1, 2], "x=1", 5, {"x": object()}, {"x": {1}}])
def test_prepare_rejects_bad_args(settings: Settings, r: fakeredis.FakeRedis, args: Any) -> None:
    make_alive(r, "a")
    with pytest.raises(SerializationError):
        routing.prepare(settings, ("ping", args), {})


@pytest.mark.parametrize("timeout", [0, -1, "5", [5]])
def test_prepare_rejects_bad_timeout(
    settings: Settings, r: fakeredis.FakeRedis, timeout: Any
) -> None:
    make_alive(r, "a")
    with pytest.raises(SerializationError, match="timeout"):
        routing.prepare(settings, ("ping", {}), {"timeout": timeout})


def test_prepare_rejects_nan_timeout(settings: Settings, r: fakeredis.FakeRedis) -> None:
    make_alive(r, "a")
    with pytest.raises(SerializationError, match="timeout"):
        routing.prepare(settings, ("ping", {}), {"timeout": float("nan")})


def test_prepare_rejects_bool_timeout(settings: Settings, r: fakeredis.FakeRedis) -> None:
    make_alive(r, "a")
    with pytest.raises(SerializationError, match="timeout"):
        routing.prepare(settings, ("ping", {}), {"timeout": True})


def test_prepare_rejects_unknown_keyword(settings: Settings, r: fakeredis.FakeRedis) -> None:
    make_alive(r, "a")
    with pytest.raises(SerializationError, match="timout"):
        routing.prepare(settings, ("ping", {}), {"timout": 3})


@pytest.mark.parametrize("session_id", [123, "s" * 1000])
def test_prepare_rejects_bad_session_id(
    settings: Settings, r: fakeredis.FakeRedis, session_id: Any
) -> None:
    make_alive(r, "a")
    with pytest.raises(SerializationError, match="session_id"):
        routing.prepare(settings, ("ping", {}), {"session_id": session_id})


# -- prepare: pools ------------------------------------------------------------------------


def test_unknown_pool_lists_known_pools(settings: Settings, r: fakeredis.FakeRedis) -> None:
    r.sadd(keys.pools(), "remote")
    with pytest.raises(PoolNotFound, match="'nope'") as info:
        routing.prepare(settings, ("ping", {}), {"pool": "nope"})
    assert info.value.details == {"pool": "nope", "known": ["a", "b", "remote"],
                                  "redis_url": settings.redis_url}
    assert "a, b, remote" in str(info.value)
    assert f"on Redis {settings.redis_url}" in str(info.value)


def test_configured_pool_without_live_node(settings: Settings, r: fakeredis.FakeRedis) -> None:
    with pytest.raises(NoWorkersAvailable, match="snakepit-tasks worker --pool a") as info:
        routing.prepare(settings, ("ping", {}), {})
    assert info.value.details == {"pool": "a", "redis_url": settings.redis_url}
    assert f"no live node serves pool 'a' on Redis {settings.redis_url}" in str(info.value)


def test_pool_known_from_redis_but_dead(settings: Settings, r: fakeredis.FakeRedis) -> None:
    r.sadd(keys.pools(), "remote")
    with pytest.raises(NoWorkersAvailable):
        routing.prepare(settings, ("ping", {}), {"pool": "remote"})


def test_expired_alive_key_means_no_workers(settings: Settings, r: fakeredis.FakeRedis) -> None:
    make_alive(r, "a")
    r.delete(keys.pool_alive("a"))
    with pytest.raises(NoWorkersAvailable):
        routing.prepare(settings, ("ping", {}), {})


def test_live_pool_routes_to_its_queue(settings: Settings, r: fakeredis.FakeRedis) -> None:
    make_alive(r, "a")
    before = time.time()
    call = routing.prepare(settings, ("add", {"a": 1, "b": 2}), {"timeout": 7})
    assert call.pool == "a"
    assert call.kwargs["pool"] == "a"
    assert call.kwargs["command"] == "add"
    assert call.kwargs["args"] == {"a": 1, "b": 2}
    assert call.queue.name == "snakepit.pool.a"
    assert call.queue.exchange.name == "snakepit"
    assert call.queue.exchange.type == "direct"
    assert call.queue.routing_key == "snakepit.pool.a"
    assert before + 7 <= call.deadline <= time.time() + 7
    assert call.kwargs["deadline"] == call.deadline


def test_named_pool_and_default_deadline(settings: Settings, r: fakeredis.FakeRedis) -> None:
    make_alive(r, "b")
    call = routing.prepare(settings, ("ping",), {"pool": "b"})
    assert call.queue.name == keys.pool_queue("b")
    expected = time.time() + settings.default_command_timeout / 1000
    assert abs(call.deadline - expected) < 5


def test_streaming_call_gets_streaming_timeout(settings: Settings, r: fakeredis.FakeRedis) -> None:
    make_alive(r, "a")
    call = routing.prepare(settings, ("stream_count", {}), {"stream": True})
    expected = time.time() + settings.pool_streaming_timeout / 1000
    assert abs(call.deadline - expected) < 5


def test_explicit_deadline_is_kept(settings: Settings, r: fakeredis.FakeRedis) -> None:
    make_alive(r, "a")
    deadline = time.time() + 123
    call = routing.prepare(settings, ("ping", {}), {"deadline": deadline, "timeout": 1})
    assert call.deadline == deadline


def test_pool_served_elsewhere_but_not_configured_here(
    settings: Settings, r: fakeredis.FakeRedis
) -> None:
    make_alive(r, "remote", "remote@h9")
    call = routing.prepare(settings, ("ping", {}), {"pool": "remote"})
    assert call.queue.name == "snakepit.pool.remote"


def test_queue_full(settings: Settings, r: fakeredis.FakeRedis) -> None:
    make_alive(r, "a")
    r.rpush(keys.pool_queue("a"), *[b"msg"] * settings.pool_max_queue_size)
    with pytest.raises(QueueFull) as info:
        routing.prepare(settings, ("ping", {}), {})
    assert info.value.details == {"pool": "a", "queued": settings.pool_max_queue_size}
    assert r.hget(keys.pool_stats("a"), "pool_saturated") == b"1"
    r.lpop(keys.pool_queue("a"))
    assert routing.prepare(settings, ("ping", {}), {}).pool == "a"


def test_check_pool(settings: Settings, r: fakeredis.FakeRedis) -> None:
    with pytest.raises(PoolNotFound):
        routing.check_pool(settings, "nope")
    with pytest.raises(NoWorkersAvailable):
        routing.check_pool(settings, "a")
    make_alive(r, "a")
    routing.check_pool(settings, "a")


# -- sessions and affinity (docs/architecture.md "Sessions and affinity") ----------------


def bind_session(
    r: fakeredis.FakeRedis,
    sid: str = "s1",
    *,
    pool: str = "a",
    alive: bool = True,
    inflight: int = 0,
    tainted: bool = False,
) -> None:
    make_alive(r, pool)
    r.hset(keys.session(sid), mapping={"worker": WORKER, "node": NODE, "pool": pool})
    if alive:
        r.hset(keys.node_lease(NODE), mapping={"pool": pool})
        r.hset(keys.node_workers(NODE), WORKER, json.dumps({"id": WORKER, "capacity": 1}))
    if inflight:
        r.hset(keys.busy(NODE), WORKER, inflight)
    if tainted:
        r.set(keys.taint(WORKER), 1, px=60_000)


def route(settings: Settings, sid: str = "s1", **kw: Any) -> routing.Call:
    return routing.prepare(settings, ("ping", {}), {"session_id": sid, **kw})


def test_unbound_session_goes_to_pool_queue(settings: Settings, r: fakeredis.FakeRedis) -> None:
    make_alive(r, "a")
    call = route(settings, "fresh")
    assert call.queue.name == keys.pool_queue("a")
    assert call.kwargs["session_id"] == "fresh"
    assert call.kwargs["affinity"] == "hint"


def test_bound_idle_worker_gets_the_call(settings: Settings, r: fakeredis.FakeRedis) -> None:
    bind_session(r)
    call = route(settings)
    assert call.queue.name == keys.node_queue(NODE)
    assert call.queue.routing_key == keys.node_queue(NODE)
    assert call.queue.exchange.name == "snakepit"
    assert call.kwargs["worker"] == WORKER


def test_hint_busy_worker_falls_back_to_pool_and_keeps_binding(
    settings: Settings, r: fakeredis.FakeRedis
) -> None:
    bind_session(r, inflight=1)
    call = route(settings)
    assert call.queue.name == keys.pool_queue("a")
    assert call.kwargs.get("fallback") is True
    assert r.hget(keys.session("s1"), "worker") == WORKER.encode()


@pytest.mark.parametrize("why", ["gone", "tainted"])
def test_hint_gone_or_tainted_worker_rebinds(
    settings: Settings, r: fakeredis.FakeRedis, why: str
) -> None:
    bind_session(r, alive=why != "gone", tainted=why == "tainted")
    call = route(settings)
    assert call.queue.name == keys.pool_queue("a")
    assert not r.exists(keys.session("s1"))


def test_strict_queue_waits_for_busy_worker(settings: Settings, r: fakeredis.FakeRedis) -> None:
    bind_session(r, inflight=1)
    call = route(settings, affinity="strict_queue")
    assert call.queue.name == keys.node_queue(NODE)
    assert call.kwargs["worker"] == WORKER


@pytest.mark.parametrize("mode", ["strict_queue", "strict_fail_fast"])
@pytest.mark.parametrize("why", ["gone", "tainted"])
def test_strict_modes_refuse_unavailable_worker(
    settings: Settings, r: fakeredis.FakeRedis, mode: str, why: str
) -> None:
    bind_session(r, alive=why != "gone", tainted=why == "tainted")
    with pytest.raises(SessionWorkerUnavailable, match=WORKER) as info:
        route(settings, affinity=mode)
    assert info.value.details["worker_id"] == WORKER
    assert info.value.details["session_id"] == "s1"


def test_strict_fail_fast_busy_worker(settings: Settings, r: fakeredis.FakeRedis) -> None:
    bind_session(r, inflight=1)
    with pytest.raises(WorkerBusy):
        route(settings, affinity="strict_fail_fast")


def test_strict_fail_fast_idle_worker(settings: Settings, r: fakeredis.FakeRedis) -> None:
    bind_session(r)
    assert route(settings, affinity="strict_fail_fast").queue.name == keys.node_queue(NODE)


def test_pool_affinity_applies(settings: Settings, r: fakeredis.FakeRedis) -> None:
    bind_session(r, pool="b", inflight=1)
    call = route(settings, pool="b")
    assert call.kwargs["affinity"] == "strict_queue"
    assert call.queue.name == keys.node_queue(NODE)


def test_bad_per_call_affinity(settings: Settings, r: fakeredis.FakeRedis) -> None:
    bind_session(r)
    with pytest.raises(ConfigurationError, match="affinity"):
        route(settings, affinity="sticky")


def test_affinity_precedence(settings: Settings) -> None:
    assert routing.affinity_for(settings, "a", None) == "hint"
    assert routing.affinity_for(settings, "b", None) == "strict_queue"
    assert routing.affinity_for(settings, "b", "strict_fail_fast") == "strict_fail_fast"
    other = settings.replace(affinity="strict_fail_fast")
    assert routing.affinity_for(other, "a", None) == "strict_fail_fast"
    assert routing.affinity_for(other, "b", None) == "strict_queue"


def test_session_node_queue_full(settings: Settings, r: fakeredis.FakeRedis) -> None:
    bind_session(r)
    r.rpush(keys.node_queue(NODE), *[b"m"] * settings.pool_max_queue_size)
    with pytest.raises(QueueFull):
        route(settings, affinity="strict_queue")


# -- prepare: capabilities -----------------------------------------------------------------


def lease(r: fakeredis.FakeRedis, pool: str, node: str, **caps: bool) -> None:
    make_alive(r, pool, node)
    r.sadd(keys.pool_nodes(pool), node)
    r.hset(keys.node_lease(node), mapping={"pool": pool, "capabilities": json.dumps(
        {"cpu": True, "cuda": False, "avx": True, **caps})})


def test_a_call_that_requires_a_capability_nobody_has_fails_at_once(
    settings: Settings, r: fakeredis.FakeRedis
) -> None:
    from snakepit_tasks.errors import DeviceNotAvailable

    lease(r, "a", "a@h1")
    with pytest.raises(DeviceNotAvailable, match="no live node of pool 'a' has cuda") as info:
        routing.prepare(settings, ("ping", {}), {"requires": ["cuda"]})
    assert info.value.details["requires"] == ["cuda"]
    assert routing.prepare(settings, ("ping", {}), {"requires": ["avx"]}).queue.name == (
        keys.pool_queue("a")), "every node has it: the pool queue"


def test_a_call_goes_to_a_node_that_has_what_it_requires(
    settings: Settings, r: fakeredis.FakeRedis
) -> None:
    lease(r, "a", "a@cpu")
    lease(r, "a", "a@gpu", cuda=True)
    for _ in range(5):
        route = routing.prepare(settings, ("ping", {}), {"requires": ["cuda"]})
        assert route.queue.name == keys.node_queue("a@gpu")
        assert route.call.requires == ("cuda",)


def test_a_pools_requirement_applies_to_its_calls(r: fakeredis.FakeRedis) -> None:
    from snakepit_tasks.errors import DeviceNotAvailable

    settings = load_settings(redis_url="redis://unit-test/0",
                             pools=[{"name": "g", "requires": ["cuda"]}])
    lease(r, "g", "g@cpu")
    with pytest.raises(DeviceNotAvailable, match="has cuda"):
        routing.prepare(settings, ("ping", {}), {"pool": "g"})
    r.delete(keys.pool_alive("g"))
    with pytest.raises(NoWorkersAvailable, match="it requires cuda"):
        routing.prepare(settings, ("ping", {}), {"pool": "g"})


def test_a_changed_binding_is_routed_by_its_own_state(
    settings: Settings, r: fakeredis.FakeRedis
) -> None:
    """The worker state read along with the binding (the binding seen last time) is used only
    while the binding is still that one."""
    bind_session(r)
    assert route(settings).queue.name == keys.node_queue(NODE)
    assert route(settings).queue.name == keys.node_queue(NODE)  # read in one round trip now
    other_node, other_worker = "a@host2", "a@host2/0"
    r.hset(keys.session("s1"), mapping={"worker": other_worker, "node": other_node})
    r.hset(keys.node_lease(other_node), mapping={"pool": "a"})
    r.hset(keys.node_workers(other_node), other_worker, json.dumps({"id": other_worker,
                                                                   "capacity": 1}))
    r.hset(keys.busy(other_node), other_worker, 1)  # busy there, idle on the old worker
    call = route(settings)
    assert call.queue.name == keys.pool_queue("a") and call.kwargs["fallback"] is True
    r.hdel(keys.busy(other_node), other_worker)
    call = route(settings)
    assert call.queue.name == keys.node_queue(other_node)
    assert call.kwargs["worker"] == other_worker
    r.delete(keys.session("s1"))
    assert route(settings).queue.name == keys.pool_queue("a")  # unbound: the pool's queue
