"""snakepit_tasks.resp and lua.run on a real Redis: one write, replies in order, errors in
place, lost connections and lost scripts recovered."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis

from snakepit_tasks import connections, lua, resp


@pytest.fixture
def r(redis_url: str) -> Any:
    return connections.redis_client(redis_url)


def test_replies_come_back_in_order_with_errors_in_place(r: Any) -> None:
    key = f"snakepit:test:resp:{uuid.uuid4()}"
    try:
        answers = resp.round_trip(
            r, resp.pack("RPUSH", key, b"a", b"b"), resp.pack("INCR", key),
            resp.pack("LRANGE", key, 0, -1), resp.pack("BLPOP", f"{key}:none", 0.01))
        assert answers[0] == 2
        assert isinstance(answers[1], redis.ResponseError)  # WRONGTYPE, the others still read
        assert answers[2] == [b"a", b"b"]
        assert answers[3] is None
        assert resp.round_trip(r, resp.pack("PING")) == [b"PONG"]  # the connection in step
    finally:
        r.delete(key)


def test_a_killed_connection_is_retried_on_a_new_one(r: Any) -> None:
    ident = resp.round_trip(r, resp.pack("CLIENT", "ID"))[0]
    r.client_kill_filter(_id=ident)
    assert resp.round_trip(r, resp.pack("PING")) == [b"PONG"]


def test_lua_run_loads_a_script_redis_lost() -> None:
    from snakepit_tasks.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis().start()  # a private one: SCRIPT FLUSH touches no one else's
    try:
        r = redis.Redis.from_url(server.url)
        r.script_flush()
        args: list[Any] = [1, 0, "", "0", b"", 60, b"", ""]
        keys = ["stats", "busy", "reply", "state", "list"]
        assert lua.run(r, "finish_call", keys, args) == 1  # EVAL: Redis had lost it
        assert lua.run(r, "finish_call", keys, args) == 1  # EVALSHA now
        assert r.hget("stats", "requests") == b"2"
        with pytest.raises(redis.ResponseError):
            lua.run(r, "finish_call", keys, ["many", *args[1:]])  # HINCRBY by "many" fails
        r.close()
    finally:
        server.stop()


def test_an_interrupted_exchange_leaves_no_reply_for_the_next(
    r: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.connection import AbstractConnection

    read = AbstractConnection.read_response
    calls = {"n": 0}

    def interrupted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # after the first reply, before the second
            raise KeyboardInterrupt
        return read(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "read_response", interrupted)
    with pytest.raises(KeyboardInterrupt):
        resp.round_trip(r, resp.pack("ECHO", "first"), resp.pack("ECHO", "second"))
    monkeypatch.setattr(AbstractConnection, "read_response", read)
    for _ in range(3):  # whichever pooled connection comes next answers its own command
        assert resp.round_trip(r, resp.pack("ECHO", "mine")) == [b"mine"]
