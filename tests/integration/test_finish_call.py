"""broker/finish_call.lua on a real Redis: the end of a call in one atomic step (counters,
busy count, the caller's reply, the processing entry, the call's state)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from snakepit_tasks import connections, keys, lua, replies

NODE, POOL = "finish@host", "finish"


@pytest.fixture
def r(redis_url: str) -> Any:
    client = connections.redis_client(redis_url)
    names = [keys.pool_stats(POOL), keys.busy(NODE), keys.fast_processing(NODE)]
    client.delete(*names)
    yield client
    client.delete(*names)


def finish(r: Any, call_id: str, *, requests: int = 1, errors: int = 0, busy: str = "",
           reply: bytes | None = None, entry: bytes = b"", ran: bool = True) -> None:
    lua.script(r, "finish_call")(
        keys=[keys.pool_stats(POOL), keys.busy(NODE), keys.reply(call_id),
              keys.call_state(call_id), keys.fast_processing(NODE)],
        args=[requests, errors, busy, "0" if reply is None else "1", reply or b"",
              replies.REPLY_TTL_SECONDS, entry, f"done:{NODE}" if ran else ""])


def test_a_call_that_ran_is_recorded_in_one_step(r: Any) -> None:
    call_id = str(uuid.uuid4())
    r.set(keys.call_state(call_id), f"started:{NODE}", px=60_000)
    r.hset(keys.busy(NODE), f"{NODE}/0", 1)
    r.lpush(keys.fast_processing(NODE), b"other", b"mine", b"last")
    body = replies.encode_outcome({"status": "pong"})
    finish(r, call_id, errors=1, busy=f"{NODE}/0", reply=body, entry=b"mine")
    assert r.hgetall(keys.pool_stats(POOL)) == {b"requests": b"1", b"errors": b"1"}
    assert r.hget(keys.busy(NODE), f"{NODE}/0") == b"0"
    assert r.lrange(keys.reply(call_id), 0, -1) == [body]
    assert 0 < r.ttl(keys.reply(call_id)) <= replies.REPLY_TTL_SECONDS
    assert r.lrange(keys.fast_processing(NODE), 0, -1) == [b"last", b"other"]
    assert r.get(keys.call_state(call_id)) == f"done:{NODE}".encode()
    assert 0 < r.pttl(keys.call_state(call_id)) <= 60_000  # its expiry kept


def test_only_what_is_asked_for_changes(r: Any) -> None:
    call_id = str(uuid.uuid4())
    finish(r, call_id, requests=0, ran=True)  # a call with no state: none is made
    assert not r.exists(keys.call_state(call_id), keys.reply(call_id), keys.pool_stats(POOL))
    r.set(keys.call_state(call_id), "timed_out")
    finish(r, call_id, ran=False)
    assert r.get(keys.call_state(call_id)) == b"timed_out"
    assert r.hgetall(keys.pool_stats(POOL)) == {b"requests": b"1"}
    assert not r.exists(keys.busy(NODE))
    r.delete(keys.call_state(call_id))
