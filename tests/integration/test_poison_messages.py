"""Poison messages never take a pool down: garbage of every kind pushed into the pool queue
and into a node queue becomes a dead letter, the node keeps serving, a caller waiting on a
refused message gets a clear error, and the node validates calls as the caller API does."""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from typing import Any

import pytest
from helpers import assert_served_by, cli_command, subprocess_env, wait_until

import snakepit_tasks as sp
from snakepit_tasks import connections, dead_letters, errors, keys
from snakepit_tasks.call import TASK_NAME
from snakepit_tasks.queues import declare_queue

pytestmark = pytest.mark.timeout(180)


def envelope(body: Any, *, encoding: str | None = "base64", task: str = TASK_NAME,
             task_id: str | None = None, content_type: str = "application/json") -> bytes:
    """A kombu Redis envelope around ``body`` (bytes as they would be after encoding)."""
    properties: dict[str, Any] = {"delivery_tag": str(uuid.uuid4()), "delivery_info": {
        "exchange": "snakepit", "routing_key": "x"}, "priority": 0}
    if encoding is not None:
        properties["body_encoding"] = encoding
    return json.dumps({
        "body": body, "content-encoding": "utf-8", "content-type": content_type,
        "headers": {"task": task, "id": task_id or str(uuid.uuid4()), "lang": "py"},
        "properties": properties,
    }).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


GARBAGE = {
    "not json": b"\xff\xfe\x00garbage{",
    "empty": b"",
    "json null": b"null",
    "json list": b"[1, 2, 3]",
    "json string": b'"hello"',
    "body not base64": envelope("%%% not base64 %%%"),
    "unknown body encoding": envelope(b64(b"[[], {}, {}]"), encoding="rot13"),
    "body not a task call": envelope(b64(b'{"a": 1}')),
    "other task": envelope(b64(b'[[], {"command": "ping"}, {}]'), task="other.task"),
    "pickle content": envelope(b64(b"\x80\x04K\x01."),
                               content_type="application/x-python-serialize"),
    "20 MB raw": b"x" * (20 * 1024 * 1024),
}


def test_garbage_in_the_pool_and_node_queues_never_stops_the_node(node, redis_url):
    n = node(pool_size=1)
    r = connections.redis_client(redis_url)
    for name, raw in GARBAGE.items():
        r.lpush(keys.pool_queue(n.pool), raw)
        r.lpush(keys.node_queue(n.name), raw)
        pong = sp.execute("ping", app=n.app, timeout=30)
        assert_served_by(n, pong)
        assert n.proc.poll() is None, f"the node exited after {name!r}"
    wait_until(lambda: dead_letters.count(r, n.pool) >= 2 * len(GARBAGE), timeout=15,
               message="every garbage message kept as a dead letter")
    entries = dead_letters.list_entries(r, n.pool, limit=100)
    assert {e["queue"] for e in entries} == {keys.pool_queue(n.pool), keys.node_queue(n.name)}
    assert all(e["reason"] for e in entries)
    assert all(len(e["preview"]) <= dead_letters.PREVIEW_CHARS + 3 for e in entries)
    assert 0 < r.ttl(keys.dead_letters(n.pool)) <= dead_letters.TTL_SECONDS
    assert sp.get_stats(n.pool, app=n.app)["dead_letters"] == len(entries)

    env = subprocess_env(redis_url, [n.table])
    listed = subprocess.run([*cli_command(), "status", "--dead-letters"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert "dead letter from snakepit.pool." in listed.stdout, listed.stdout + listed.stderr
    dropped = subprocess.run([*cli_command(), "status", "--drop-dead-letters"], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert dropped.returncode == 0, dropped.stderr
    assert dead_letters.count(r, n.pool) == 0
    # Still serving, same process.
    assert_served_by(n, sp.execute("ping", app=n.app))


def test_a_caller_waiting_on_a_refused_message_gets_dead_lettered(node, redis_url):
    n = node(pool_size=1)
    r = connections.redis_client(redis_url)
    task_id = str(uuid.uuid4())
    r.lpush(keys.pool_queue(n.pool), envelope("%%% not base64", task_id=task_id))
    result = sp.get_result(task_id, app=n.app)
    with pytest.raises(errors.DeadLettered, match="not base64|not a task message"):
        result.get(timeout=30)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"command": "ping", "session_id": "s" * 100_000}, "session_id must be a string of"),
        ({"command": "ping", "args": [1, 2]}, "arguments must be a dict"),
        ({"command": "ping", "timeout": "10"}, "timeout must be"),
        ({"command": "bad\x00name"}, "control characters"),
        ({"command": "ping", "unknown_field": 1}, "unknown argument"),
    ],
    ids=["100KB session id", "args list", "timeout text", "NUL in name", "unknown field"],
)
def test_the_node_validates_what_it_receives(node, redis_url, kwargs, match):
    """Sent past the caller API (send_task by name), a bad call is refused by the node: never
    run, no session key made, the caller gets the same error the API would have raised."""
    n = node(pool_size=1)
    r = connections.redis_client(redis_url)
    queue = declare_queue(keys.pool_queue(n.pool))
    result = n.app.send_task(TASK_NAME, kwargs=kwargs, queue=queue)
    with pytest.raises(errors.SerializationError, match=match):
        result.get(timeout=30)
    assert not r.keys(keys.session("s" * 100_000))
    assert dead_letters.count(r, n.pool) >= 1
    assert_served_by(n, sp.execute("ping", app=n.app))


def test_oversized_arguments_fail_before_sending(node):
    n = node(pool_size=1)
    app = sp.configure(redis_url=n.redis_url, pools=[n.table], max_call_bytes=1000)
    with pytest.raises(errors.SerializationError, match="over max_call_bytes"):
        sp.execute("echo", {"x": "y" * 2000}, app=app)
    with pytest.raises(errors.SerializationError, match="over max_call_bytes"):
        sp.execute_async("echo", {"x": "y" * 2000}, app=app)
    assert sp.execute("echo", {"x": "y" * 10}, app=app) == {"x": "y" * 10}


def test_an_oversized_result_is_a_clear_error_and_the_worker_serves_on(node, node_env):
    node_env["SNAKEPIT_MAX_RESULT_BYTES"] = "1000"
    n = node(pool_size=1)
    with pytest.raises(errors.SerializationError, match="over max_result_bytes"):
        sp.execute("echo", {"x": "y" * 5000}, app=n.app)
    assert_served_by(n, sp.execute("ping", app=n.app))


def test_the_node_refuses_arguments_over_its_own_limit(node, node_env, redis_url):
    node_env["SNAKEPIT_MAX_CALL_BYTES"] = "1000"
    n = node(pool_size=1)
    result = n.app.send_task(TASK_NAME, kwargs={"command": "echo", "args": {"x": "y" * 5000}},
                             queue=declare_queue(keys.pool_queue(n.pool)))
    with pytest.raises(errors.SerializationError, match="over max_call_bytes"):
        result.get(timeout=30)
    assert_served_by(n, sp.execute("ping", app=n.app))
