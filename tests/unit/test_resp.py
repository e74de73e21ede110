"""snakepit_tasks.resp.pack: commands in RESP, byte for byte as redis-py packs them."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from redis.connection import Connection

from snakepit_tasks import resp


@pytest.mark.parametrize("args", [
    ("PING",),
    ("EVAL", "return 1", 0),
    ("BLPOP", "snakepit:reply:x", 9.5),
    ("LPUSH", "k", b"\x00\xffbinary\r\n", "ünïcode", -3, 0),
])
def test_pack_writes_what_redis_py_writes(args: tuple[Any, ...]) -> None:
    assert resp.pack(*args) == b"".join(Connection().pack_command(*args))


@pytest.mark.parametrize("bad", [True, None, ["a"], {"a": 1}])
def test_pack_refuses_what_is_not_a_redis_argument(bad: Any) -> None:
    with pytest.raises(TypeError):
        resp.pack("SET", "k", bad)


def test_a_batch_packs_what_the_same_pipeline_calls_would_send() -> None:
    import redis

    batch = resp.Batch(resp.pack("PING"))
    pipe = redis.Redis().pipeline(transaction=False)  # never connects: nothing is executed
    for target in (batch, pipe):
        target.set("k", b"v")
        with warnings.catch_warnings():  # redis-py deprecates setex; Celery's backend sends it
            warnings.simplefilter("ignore", DeprecationWarning)
            target.setex("k", 30, "v")
        target.publish("chan", b"m")
        target.zrem("z", "a", "b")
        target.hdel("h", "f")
    sent = [b"".join(Connection().pack_command(*args)) for args, _ in pipe.command_stack]
    assert batch.commands == [resp.pack("PING"), *sent]
