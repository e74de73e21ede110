"""snakepit_tasks.state with fakeredis: node leases, liveness, counters, queue lengths."""

from __future__ import annotations

import json
import time
from typing import Any

import fakeredis
import pytest

from snakepit_tasks import connections, keys, kombu_redis, pool_state
from snakepit_tasks.node.lease import NodeLease


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    yield client
    client.close()


def describer(node: str, workers: int = 2) -> Any:
    def describe() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        snaps = [
            {"id": f"{node}/{i}", "pid": 1000 + i, "state": "ready", "capacity": 1}
            for i in range(workers)
        ]
        return {"pool": "p", "host": "h", "workers": workers}, snaps

    return describe


def lease(r: fakeredis.FakeRedis, node: str, workers: int = 2, ttl: int = 5000) -> NodeLease:
    return NodeLease(r, node, "p", ttl, 50, describer(node, workers))


def test_text() -> None:
    assert connections.text(b"abc") == "abc"
    assert connections.text("abc") == "abc"


def test_publish_writes_lease_workers_alive_and_pools(r: fakeredis.FakeRedis) -> None:
    lease(r, "p@h1").publish()
    raw = r.hgetall(keys.node_lease("p@h1"))
    info = {connections.text(k): connections.text(v) for k, v in raw.items()}
    assert info["pool"] == "p" and info["host"] == "h"
    assert abs(float(info["heartbeat"]) - time.time()) < 5
    workers = r.hgetall(keys.node_workers("p@h1"))
    assert {connections.text(k) for k in workers} == {"p@h1/0", "p@h1/1"}
    assert json.loads(workers[b"p@h1/0"])["pid"] == 1000
    assert r.get(keys.pool_alive("p")) == b"p@h1"
    assert pool_state.pool_is_alive(r, "p")
    assert pool_state.known_pools(r) == {"p"}
    assert r.smembers(keys.pool_nodes("p")) == {b"p@h1"}
    for key in (keys.node_lease("p@h1"), keys.node_workers("p@h1"), keys.pool_alive("p")):
        assert 0 < r.pttl(key) <= 5000, key


def test_publish_replaces_the_worker_list(r: fakeredis.FakeRedis) -> None:
    count = {"n": 3}

    def describe() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return {"pool": "p"}, [{"id": f"n/{i}"} for i in range(count["n"])]

    node = NodeLease(r, "n", "p", 5000, 1000, describe)
    node.publish()
    count["n"] = 1
    node.publish()
    assert r.hkeys(keys.node_workers("n")) == [b"n/0"]
    count["n"] = 0
    node.publish()
    assert not r.exists(keys.node_workers("n"))


def test_live_nodes(r: fakeredis.FakeRedis) -> None:
    lease(r, "p@h2", workers=1).publish()
    lease(r, "p@h1", workers=2).publish()
    nodes = pool_state.live_nodes(r, "p")
    assert [n["name"] for n in nodes] == ["p@h1", "p@h2"]
    assert [w["id"] for w in nodes[0]["workers"]] == ["p@h1/0", "p@h1/1"]
    assert nodes[1]["workers"][0]["state"] == "ready"
    assert pool_state.live_nodes(r, "other") == []


def test_live_nodes_skips_nodes_whose_lease_is_gone(r: fakeredis.FakeRedis) -> None:
    lease(r, "p@h1").publish()
    lease(r, "p@h2").publish()
    r.delete(keys.node_lease("p@h2"))  # as if its TTL ran out
    assert [n["name"] for n in pool_state.live_nodes(r, "p")] == ["p@h1"]


def test_lease_expires_without_refresh(r: fakeredis.FakeRedis) -> None:
    lease(r, "p@h1", ttl=50).publish()
    time.sleep(0.15)
    assert pool_state.live_nodes(r, "p") == []
    assert not pool_state.pool_is_alive(r, "p")
    assert pool_state.known_pools(r) == {"p"}  # ever served, still known


def test_stop_withdraws_lease(r: fakeredis.FakeRedis) -> None:
    node = lease(r, "p@h1")
    node.start()
    try:
        assert pool_state.pool_is_alive(r, "p")
    finally:
        node.stop()
    assert not r.exists(keys.node_lease("p@h1"))
    assert not r.exists(keys.node_workers("p@h1"))
    assert r.smembers(keys.pool_nodes("p")) == set()
    assert not pool_state.pool_is_alive(r, "p")
    assert pool_state.live_nodes(r, "p") == []
    assert pool_state.known_pools(r) == {"p"}


def test_stop_keeps_pool_alive_while_another_node_serves(r: fakeredis.FakeRedis) -> None:
    one, two = lease(r, "p@h1"), lease(r, "p@h2")
    one.publish()
    two.publish()
    one.stop()
    assert pool_state.pool_is_alive(r, "p")
    assert [n["name"] for n in pool_state.live_nodes(r, "p")] == ["p@h2"]
    two.stop()
    assert not pool_state.pool_is_alive(r, "p")


def test_lease_thread_refreshes(r: fakeredis.FakeRedis) -> None:
    node = lease(r, "p@h1", ttl=300)  # refreshed every 50 ms
    node.start()
    try:
        first = float(r.hget(keys.node_lease("p@h1"), "heartbeat"))
        time.sleep(0.4)  # longer than the TTL: only refreshes keep it
        assert pool_state.pool_is_alive(r, "p")
        assert float(r.hget(keys.node_lease("p@h1"), "heartbeat")) > first
    finally:
        node.stop()


def test_counters(r: fakeredis.FakeRedis) -> None:
    assert pool_state.read_counters(r, "p") == {}
    pool_state.count(r, "p", requests=2, errors=1)
    pool_state.count(r, "p", requests=3, queue_timeouts=0)
    pool_state.count(r, "p")
    pool_state.count(r, "q", pool_saturated=1)
    assert pool_state.read_counters(r, "p") == {"requests": 5, "errors": 1}
    assert pool_state.read_counters(r, "q") == {"pool_saturated": 1}


def test_queue_length_sums_priority_subqueues(r: fakeredis.FakeRedis) -> None:
    q = keys.pool_queue("p")
    assert kombu_redis.queue_length(r, q) == 0
    r.rpush(q, b"a", b"b")
    r.rpush(q + "\x06\x163", b"c")
    r.rpush(q + "\x06\x169", b"d", b"e", b"f")
    r.rpush(keys.pool_queue("other"), b"x")
    assert kombu_redis.queue_length(r, q) == 6


def test_redis_client_is_shared_per_url() -> None:
    try:
        a = connections.redis_client("redis://127.0.0.1:1/0")
        assert connections.redis_client("redis://127.0.0.1:1/0") is a
        assert connections.redis_client("redis://127.0.0.1:1/1") is not a
    finally:
        connections.close_clients()
    assert connections.redis_client("redis://127.0.0.1:1/0") is not a
    connections.close_clients()
