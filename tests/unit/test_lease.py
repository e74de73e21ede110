"""snakepit_tasks.node.lease: a node's lease is republished soon after a change, not only
every node_lease_interval_ms."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import fakeredis

from snakepit_tasks import keys
from snakepit_tasks.node.lease import NodeLease


def test_a_change_is_published_without_waiting_for_the_interval(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    state = {"requests": 0}
    published = threading.Event()

    def describe() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        if state["requests"]:
            published.set()
        return {"pool": "p"}, [{"id": "n@h/0", "requests": state["requests"]}]

    lease = NodeLease(fake_redis, "n@h", "p", ttl_ms=600_000, interval_ms=300_000,
                      describe=describe)
    lease.start()
    try:
        state["requests"] = 1
        lease.changed()
        assert published.wait(30), "no publish after changed() (the interval is 5 minutes)"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            raw = fake_redis.hget(keys.node_workers("n@h"), "n@h/0")
            if raw and json.loads(raw)["requests"] == 1:
                break
            time.sleep(0.01)
        assert json.loads(fake_redis.hget(keys.node_workers("n@h"), "n@h/0"))["requests"] == 1
    finally:
        lease.stop()
    assert not fake_redis.exists(keys.node_lease("n@h"))


def test_stop_wakes_the_lease_thread(fake_redis: fakeredis.FakeRedis) -> None:
    lease = NodeLease(fake_redis, "n@h", "p", ttl_ms=600_000, interval_ms=300_000,
                      describe=lambda: ({"pool": "p"}, []))
    lease.start()
    lease.stop()
    assert lease._thread is not None and not lease._thread.is_alive()
