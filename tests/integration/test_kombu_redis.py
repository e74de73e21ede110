"""What snakepit relies on in kombu's Redis transport, pinned against the installed kombu on a
real Redis: where a queue's messages live (priority sub-lists), the message envelope, the
unacked hash, and that a re-encoded message is delivered as kombu would deliver the original."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kombu import Connection

from snakepit_tasks import connections, kombu_redis
from snakepit_tasks.app import create_app
from snakepit_tasks.call import TASK_NAME, Call
from snakepit_tasks.config import load_settings
from snakepit_tasks.queues import declare_queue

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def app(redis_url: str) -> Any:
    the_app = create_app(load_settings(redis_url=redis_url))
    yield the_app
    the_app.close()


def fresh_queue() -> str:
    return f"snakepit.pool.kombu{uuid.uuid4().hex[:8]}"


def test_a_sent_call_lies_in_the_queue_list_as_kombu_wrote_it(app: Any, redis_url: str) -> None:
    r = connections.redis_client(redis_url)
    queue = fresh_queue()
    call = Call(command="ping", args={"x": [1, "é"]}, pool="p", session_id="s1")
    sent = app.send_task(TASK_NAME, kwargs=call.to_kwargs(), queue=declare_queue(queue))
    assert kombu_redis.queue_length(r, queue) == 1
    raw = r.lindex(queue, 0)
    message, kwargs = kombu_redis.decode_message(raw)
    assert kombu_redis.message_id(message) == sent.id
    assert Call.parse((), kwargs) == call
    r.delete(queue)


def test_priorities_go_to_the_sub_lists_queue_length_counts(app: Any, redis_url: str) -> None:
    r = connections.redis_client(redis_url)
    queue = fresh_queue()
    for priority in (0, 3, 6, 9):
        app.send_task(TASK_NAME, kwargs={"command": "ping"}, queue=declare_queue(queue),
                      priority=priority)
    assert [r.llen(queue + s) for s in kombu_redis.PRIORITY_SUFFIXES] == [1, 1, 1, 1]
    assert kombu_redis.queue_length(r, queue) == 4
    assert kombu_redis.QUEUE_PARTS == 4
    r.delete(*(queue + s for s in kombu_redis.PRIORITY_SUFFIXES))


def test_a_delivered_message_waits_in_the_unacked_hash(app: Any, redis_url: str) -> None:
    r = connections.redis_client(redis_url)
    queue = fresh_queue()
    sent = app.send_task(TASK_NAME, kwargs={"command": "ping"}, queue=declare_queue(queue))
    with Connection(redis_url) as conn:
        bound = declare_queue(queue)(conn.default_channel)
        message = bound.get(no_ack=False)
        assert message is not None
        tag = message.delivery_tag
        entry = r.hget(kombu_redis.UNACKED, tag)
        assert entry is not None and r.zscore(kombu_redis.UNACKED_INDEX, tag) is not None
        envelope, kwargs = kombu_redis.decode_message(kombu_redis.unacked_message(entry))
        assert kombu_redis.message_id(envelope) == sent.id and kwargs["command"] == "ping"
        message.ack()
    assert r.hget(kombu_redis.UNACKED, tag) is None


def test_a_re_encoded_message_is_delivered_with_its_new_arguments(
    app: Any, redis_url: str
) -> None:
    r = connections.redis_client(redis_url)
    source, target = fresh_queue(), fresh_queue()
    sent = app.send_task(TASK_NAME, kwargs=Call(command="ping", worker="n/0").to_kwargs(),
                         queue=declare_queue(source))
    message, kwargs = kombu_redis.decode_message(r.rpop(source))
    moved = Call.parse((), kwargs).replace(worker=None)
    r.rpush(target, kombu_redis.encode_message(message, moved.to_kwargs(), target))
    with Connection(redis_url) as conn:
        delivered = declare_queue(target)(conn.default_channel).get(no_ack=True)
        assert delivered is not None
        args, got, _ = delivered.decode()
        assert args == [] and Call.parse((), got) == moved
        assert delivered.headers["id"] == sent.id
        assert delivered.delivery_info["routing_key"] == target


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xfe not json", b"", b"null", b"[1, 2]", b'"text"', b'{"body": "%%%",'
     b' "properties": {"body_encoding": "base64"}}',
     b'{"body": "e30=", "properties": {"body_encoding": "rot13"}}',
     b'{"body": "e30=", "properties": {"body_encoding": "base64"}}'],
)
def test_anything_else_is_an_undecodable_message(raw: bytes) -> None:
    with pytest.raises(kombu_redis.UndecodableMessage):
        kombu_redis.decode_message(raw)


def test_a_channel_reuses_one_client_in_a_snakepit_send_and_still_publishes(
    app: Any, redis_url: str,
) -> None:
    kombu_redis.install()
    r = connections.redis_client(redis_url)
    queue = fresh_queue()
    with Connection(redis_url) as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is not second  # outside a snakepit send: kombu's own way
        with kombu_redis.pushing(queue):
            with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
                assert first is second and first.connection_pool is channel.pool
            sent = app.send_task(TASK_NAME, kwargs={"command": "ping"},
                                 queue=declare_queue(queue))
    message, _ = kombu_redis.decode_message(r.lindex(queue, 0))
    assert kombu_redis.message_id(message) == sent.id
    r.delete(queue)


def test_pushing_hands_the_publish_to_the_push_once(app: Any, redis_url: str) -> None:
    kombu_redis.install()
    r = connections.redis_client(redis_url)
    queue, other = fresh_queue(), fresh_queue()
    pushed: list[tuple[str, str]] = []

    def push(target: str, raw: str) -> None:
        pushed.append((target, raw))
        r.lpush(target, raw)

    with kombu_redis.pushing(queue, push):
        app.send_task(TASK_NAME, kwargs={"command": "ping"}, queue=declare_queue(other))
        sent = app.send_task(TASK_NAME, kwargs={"command": "ping"}, queue=declare_queue(queue),
                             priority=6)
        again = app.send_task(TASK_NAME, kwargs={"command": "ping"}, queue=declare_queue(queue))
    assert [target for target, _ in pushed] == [queue + kombu_redis.PRIORITY_SUFFIXES[2]]
    message, _ = kombu_redis.decode_message(pushed[0][1])
    assert kombu_redis.message_id(message) == sent.id
    assert kombu_redis.queue_length(r, queue) == 2 and kombu_redis.queue_length(r, other) == 1
    assert kombu_redis.message_id(kombu_redis.decode_message(r.lindex(queue, 0))[0]) == again.id
    r.delete(other, *(queue + s for s in kombu_redis.PRIORITY_SUFFIXES))
