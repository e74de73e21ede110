"""Celery task events for fast-lane calls: a real node with task events on, synchronous calls
over the fast lane, and Celery's own event receiver listening on the broker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import assert_served_by, sent_call_ids, wait_until

import snakepit_tasks as sp
from snakepit_tasks import errors

pytestmark = pytest.mark.timeout(120)


class Captured:
    """Every event Celery's ``EventReceiver`` sees on the app's broker, in a thread."""

    def __init__(self, app: Any) -> None:
        self.events: list[dict[str, Any]] = []
        self._conn = app.connection_for_read()
        self.receiver = app.events.Receiver(self._conn, handlers={"*": self.events.append})
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def of(self, call_id: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e.get("uuid") == call_id]

    def types(self, call_id: str) -> list[str]:
        return [e["type"] for e in self.of(call_id)]

    def close(self) -> None:
        self.receiver.should_stop = True
        self._thread.join(10)
        self._conn.release()


@pytest.fixture
def captured(node: Any) -> Iterator[tuple[Any, Captured]]:
    handle = node(pool_size=1, env={"SNAKEPIT_TASK_EVENTS": "true"})
    app = sp.configure(redis_url=handle.redis_url, pools=[handle.table], fast_lane=True,
                       task_events=True)
    seen = Captured(app)
    try:
        # Listening once the node's own heartbeats arrive (events sent earlier are lost).
        wait_until(lambda: any(e["type"] == "worker-heartbeat" and e.get("hostname") ==
                               handle.name for e in list(seen.events)),
                   timeout=60, message="a worker heartbeat from the node")
        yield handle, seen
    finally:
        seen.close()


def test_a_fast_lane_call_sends_received_started_succeeded_under_its_tool_name(captured):
    handle, seen = captured
    with sent_call_ids() as calls:
        assert sp.execute("add", {"a": 2, "b": 40}, pool=handle.pool, app=handle.app) == 42
        result = sp.execute("ping", pool=handle.pool, app=handle.app)
    assert_served_by(handle, result)
    add_id = calls[0]
    wait_until(lambda: "task-succeeded" in seen.types(add_id), timeout=30,
               message=lambda: f"task-succeeded for {add_id}: {seen.of(add_id)}")
    by_type = {e["type"]: e for e in seen.of(add_id)}
    assert list(by_type) == ["task-received", "task-started", "task-succeeded"]
    received = by_type["task-received"]
    assert received["name"] == "add"
    assert "'a': 2" in received["kwargs"] and handle.pool in received["kwargs"]
    assert "deadline" not in received["kwargs"]
    for event in by_type.values():
        assert event["hostname"] == handle.name
        assert event["timestamp"] > 0 and event["pid"] == handle.pid
    succeeded = by_type["task-succeeded"]
    assert succeeded["result"] == "42"
    assert succeeded["runtime"] >= 0
    wait_until(lambda: "task-succeeded" in seen.types(calls[1]), timeout=30,
               message="the ping's events")


def test_a_failing_fast_lane_call_sends_task_failed(captured):
    handle, seen = captured
    with sent_call_ids() as calls, pytest.raises(errors.AdapterError):
        sp.execute("fail", {"message": "no good"}, pool=handle.pool, app=handle.app)
    call_id = calls[0]
    wait_until(lambda: "task-failed" in seen.types(call_id), timeout=30,
               message=lambda: f"task-failed for {call_id}: {seen.of(call_id)}")
    assert seen.types(call_id) == ["task-received", "task-started", "task-failed"]
    failed = seen.of(call_id)[-1]
    assert "AdapterError" in failed["exception"] and "no good" in failed["exception"]
    assert seen.of(call_id)[0]["name"] == "fail"
