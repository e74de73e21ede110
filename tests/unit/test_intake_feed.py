"""node/feed.py's settle: what a node's intake lists held goes back to the queue it came from,
next in line, and nothing is lost or doubled (fakeredis)."""

from __future__ import annotations

import json
from typing import Any

from snakepit_tasks import keys
from snakepit_tasks.node.feed import settle, source_of

POOL, NODE = "p", "p@host"


def envelope(call_id: str, queue: str | None) -> bytes:
    info = {"routing_key": queue} if queue else {}
    return json.dumps({"headers": {"id": call_id},
                       "properties": {"delivery_info": info}}).encode()


def test_source_of_reads_the_routing_key_and_falls_back_to_the_pool_queue() -> None:
    assert source_of(envelope("a", keys.node_queue(NODE)), "x") == keys.node_queue(NODE)
    assert source_of(envelope("a", keys.pool_queue(POOL)), "x") == keys.pool_queue(POOL)
    assert source_of(envelope("a", None), "x") == "x"
    assert source_of(envelope("a", "someone.else"), "x") == "x"
    assert source_of(b"not json", "x") == "x"


def test_settle_puts_every_held_message_back_at_the_head_of_its_queue(
    fake_redis: Any,
) -> None:
    r = fake_redis
    pool_q, node_q = keys.pool_queue(POOL), keys.node_queue(NODE)
    r.lpush(pool_q, envelope("waiting", pool_q))  # already queued: stays behind what comes back
    held = {
        keys.intake_feeding(NODE, pool_q): envelope("feeding-pool", pool_q),
        keys.intake_feeding(NODE, node_q): envelope("feeding-node", node_q),
        keys.intake_staging(NODE): envelope("staged", node_q),
        keys.intake_pulled(NODE): envelope("pulled", None),
    }
    for key, raw in held.items():
        r.lpush(key, raw)

    assert settle(r, POOL, NODE) == 4
    assert not any(r.exists(key) for key in held)
    pool_ids = [json.loads(m)["headers"]["id"] for m in r.lrange(pool_q, 0, -1)]
    node_ids = [json.loads(m)["headers"]["id"] for m in r.lrange(node_q, 0, -1)]
    assert sorted(pool_ids) == ["feeding-pool", "pulled", "waiting"]
    assert pool_ids[0] == "waiting"  # kombu pops from the right: the settled ones run first
    assert sorted(node_ids) == ["feeding-node", "staged"]
    assert settle(r, POOL, NODE) == 0
