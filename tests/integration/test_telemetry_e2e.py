"""Telemetry through the real stack: node-side events in the node process (recorded by a
``telemetry_handlers`` hook), a tool's own events re-emitted there, caller-side events in
this process, and the runtime's logs and prints in the node's log, tagged and redacted."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import INTEGRATION, assert_served_by, wait_until

import snakepit_tasks as sp
from snakepit_tasks import errors, telemetry
from snakepit_tasks.resilience import CircuitBreaker, RetryPolicy

ADAPTER = "itest_observability:ObservedAdapter"
PATH = {"PYTHONPATH": str(INTEGRATION)}
SECRET_URL = "redis://app:hunter2@db.example:6379/0"


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def named(records: list[dict[str, Any]], *event: str) -> list[dict[str, Any]]:
    return [r for r in records if tuple(r["event"]) == event]


@pytest.fixture
def recorded(node: Any, tmp_path: Path) -> Any:
    """A node of the observed adapter whose every telemetry event lands in a file."""
    path = tmp_path / "events.jsonl"
    n = node(adapter=ADAPTER, adapter_env=PATH, env={
        **PATH,
        "ITEST_EVENTS_FILE": str(path),
        "SNAKEPIT_TELEMETRY_HANDLERS": "itest_observability:record_events",
        "SNAKEPIT_HEARTBEAT_PING_INTERVAL_MS": "200",
        "SNAKEPIT_LOG_LEVEL": "info",
    })
    n.events_path = path
    return n


@pytest.fixture
def caller_events() -> Iterator[list[tuple[Any, ...]]]:
    seen: list[tuple[Any, ...]] = []
    names = [e for e, spec in telemetry.EVENTS.items() if spec.side in ("caller", "any")]
    telemetry.attach_many("itest-caller", names, lambda e, m, md: seen.append((e, m, md)))
    yield seen
    telemetry.detach("itest-caller")


def wait_for(n: Any, *event: str, count: int = 1, **metadata: Any) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]]:
        hits = [r for r in named(read_events(n.events_path), *event)
                if all(r["metadata"].get(k) == v for k, v in metadata.items())]
        return hits if len(hits) >= count else []

    return wait_until(found, timeout=20, message=f"{count} x {event} {metadata} in the node")


def test_node_events_and_adapter_events(recorded: Any, caller_events: list[Any]) -> None:
    n = recorded
    result = sp.execute("measured", {"n": 3}, app=n.app)
    assert_served_by(n, result)
    worker_id = result["worker_id"]
    assert sp.execute("measured", app=n.app)["worker_id"] == worker_id  # handler raised once
    records = read_events(n.events_path)
    # start-up, in the node process
    assert {r["pid"] for r in records} == {n.pid}
    [started] = named(records, "snakepit", "pool", "init_started")
    assert started["metadata"] == {"pool": n.pool, "node": n.name, "adapter": ADAPTER,
                                   "profile": "process"}
    assert named(records, "snakepit", "pool", "init_complete")[0]["measurements"]["workers"] == 1
    [spawned] = named(records, "snakepit", "worker", "spawned")
    assert spawned["metadata"]["worker_id"] == worker_id
    assert spawned["metadata"]["pid"] == result["pid"]
    assert named(records, "snakepit", "pool", "worker_ready")
    # the calls
    executed = wait_for(n, "snakepit", "call", "executed", count=2)
    assert executed[0]["metadata"]["success"] is True
    assert executed[0]["metadata"]["tool"] == "measured"
    assert executed[0]["metadata"]["worker_id"] == worker_id
    assert executed[0]["measurements"]["duration_us"] > 0
    assert len(named(read_events(n.events_path), "snakepit", "call", "dispatched")) == 2
    # the tool's own events, re-emitted by the node with where they came from
    [done, _] = wait_for(n, "snakepit", "adapter", "work", "done", count=2)
    assert done["measurements"]["items"] == 3 and done["measurements"]["system_time"] > 0
    assert done["metadata"]["kind"] == "unit" and done["metadata"]["tool"] == "measured"
    assert done["metadata"]["worker_id"] == worker_id and done["metadata"]["pool"] == n.pool
    assert done["metadata"]["call_id"] == executed[0]["metadata"]["call_id"]
    [stop, _] = wait_for(n, "snakepit", "adapter", "work", "step", "stop", count=2)
    assert stop["measurements"]["duration_us"] >= 1000
    # the raising handler: detached with one logged error, and the calls were unharmed
    wait_until(lambda: "itest-raiser" in n.output(), timeout=10, message="the handler error")
    assert n.output().count("'itest-raiser' raised") == 1
    # caller-side events, in this process
    sent = [md for e, m, md in caller_events if e == ("snakepit", "call", "sent")]
    assert [md["tool"] for md in sent] == ["measured", "measured"]
    assert sent[0]["call_id"] == executed[0]["metadata"]["call_id"]
    returned = [(m, md) for e, m, md in caller_events if e == ("snakepit", "call", "returned")]
    assert all(md["success"] for _, md in returned) and len(returned) == 2


def test_spans_streams_bad_names_and_background_events(recorded: Any) -> None:
    n = recorded
    with pytest.raises(errors.AdapterError, match="bad step"):
        sp.execute("failing_span", app=n.app)
    [failed] = wait_for(n, "snakepit", "adapter", "work", "step", "exception")
    assert failed["metadata"]["kind"] == "ValueError" and failed["metadata"]["stage"] == "two"
    with pytest.raises(errors.AdapterError, match="invalid telemetry event name") as bad:
        sp.execute("bad_name", {"name": "has spaces"}, app=n.app)
    assert bad.value.type == "TelemetryError"
    chunks = list(sp.stream("items", {"n": 3}, app=n.app))
    assert [c["i"] for c in chunks] == [0, 1, 2]
    assert len(wait_for(n, "snakepit", "adapter", "stream", "item", count=3)) == 3
    assert len(wait_for(n, "snakepit", "stream", "chunk", count=3)) == 3
    wait_for(n, "snakepit", "call", "executed", tool="items", streaming=True)
    sp.execute("background", app=n.app)  # emits 0.2 s later, outside any call
    [late] = wait_for(n, "snakepit", "adapter", "work", "done", kind="background")
    assert late["metadata"]["call_id"] == "" and late["metadata"]["worker_id"]


def test_crash_taint_restart_and_rebind(recorded: Any, caller_events: list[Any]) -> None:
    n = recorded
    first = sp.execute_in_session("s-crash", "measured", app=n.app)
    wait_for(n, "snakepit", "session", "bound", session_id="s-crash")
    os.kill(first["pid"], signal.SIGKILL)
    [crash] = wait_for(n, "snakepit", "worker", "crash")
    assert crash["metadata"]["pid"] == first["pid"] and crash["metadata"]["signal"] == "SIGKILL"
    assert crash["measurements"]["exit_code"] == -9
    wait_for(n, "snakepit", "worker", "tainted", worker_id=first["worker_id"])
    [restarted] = wait_for(n, "snakepit", "worker", "restarted")
    assert restarted["metadata"]["old_pid"] == first["pid"]
    assert restarted["metadata"]["reason"] == "crash"
    wait_until(lambda: "restarted as pid" in n.output(), timeout=10,
               message="an INFO line in the node log (log_level info)")
    assert len(wait_for(n, "snakepit", "pool", "worker_ready", count=2)) == 2
    wait_until(lambda: n.worker_pids() and n.worker_pids()[0] != first["pid"], timeout=20,
               message="the restarted worker")
    again = sp.execute_in_session("s-crash", "measured", app=n.app)  # tainted: re-bound
    assert again["pid"] != first["pid"]
    rebound = [md for e, m, md in caller_events if e == ("snakepit", "session", "rebound")]
    assert rebound == [{"session_id": "s-crash", "pool": n.pool,
                        "worker_id": first["worker_id"], "reason": "tainted after a crash"}]
    assert len(wait_for(n, "snakepit", "session", "bound", count=2, session_id="s-crash")) == 2


def test_recycling_events(node: Any, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    n = node(adapter=ADAPTER, adapter_env=PATH, env={
        **PATH, "ITEST_EVENTS_FILE": str(path),
        "SNAKEPIT_TELEMETRY_HANDLERS": "itest_observability:record_events",
        "SNAKEPIT_WORKER_MAX_REQUESTS": "2",
    })
    n.events_path = path
    first = sp.execute("measured", app=n.app)
    sp.execute("measured", app=n.app)  # the second call makes it due
    [recycled] = wait_for(n, "snakepit", "worker", "recycled")
    assert recycled["measurements"]["requests"] == 2
    assert "worker_max_requests" in recycled["metadata"]["reason"]
    wait_for(n, "snakepit", "worker", "terminated", reason="recycle", pid=first["pid"])
    wait_for(n, "snakepit", "worker", "restarted", reason="recycle")


def test_runtime_logs_and_prints_reach_the_node_log_tagged_and_redacted(recorded: Any) -> None:
    n = recorded
    result = sp.execute("noisy", {"url": SECRET_URL}, app=n.app)
    worker_id = n.worker_ids()[0]
    assert_served_by(n, result)
    wait_until(lambda: "itest.observability" in n.output(), timeout=10,
               message="the tool's log record in the node log")
    out = n.output()
    assert f"[{worker_id}] stdout: printing redis://app:<REDACTED>@db.example" in out
    assert f"[{worker_id}] itest.observability: connecting to redis://app:<REDACTED>@" in out
    with pytest.raises(errors.AdapterError) as leaked:
        sp.execute("leak", {"url": SECRET_URL}, app=n.app)
    assert "hunter2" not in str(leaked.value) and "hunter2" not in leaked.value.traceback
    assert "hunter2" not in n.output()


def test_caller_side_circuit_and_retry_events(
    redis_url: str, node: Any, caller_events: list[Any]
) -> None:
    import redis

    breaker = CircuitBreaker("itest-telemetry", redis=redis.Redis.from_url(redis_url),
                             failure_threshold=1, reset_timeout_ms=100)
    breaker.reset()
    breaker.record_failure(breaker.acquire())
    wait_until(lambda: breaker.state == "half_open", timeout=5, message="half-open")
    breaker.record_success(breaker.acquire())
    states = [(e[-1], md["from"]) for e, m, md in caller_events
              if e[1] == "circuit_breaker"]
    assert states == [("opened", "closed"), ("half_open", "open"), ("closed", "half_open")]

    n = node()
    policy = RetryPolicy(max_attempts=2, backoff_ms=(1,), jitter=0,
                         retriable_errors=(errors.AdapterError,))
    with pytest.raises(errors.AdapterError):
        sp.execute("fail", retry=policy, app=n.app)
    retries = [(e[-1], dict(m)) for e, m, md in caller_events if e[1] == "retry"]
    assert retries == [("attempt", {"attempt": 1, "delay_ms": 1.0}),
                       ("exhausted", {"attempts": 2})]


def test_heartbeat_session_and_saturation_events(
    node: Any, tmp_path: Path, make_app: Any, caller_events: list[Any]
) -> None:
    path = tmp_path / "events.jsonl"
    n = node(adapter=ADAPTER, adapter_env=PATH, env={
        **PATH, "ITEST_EVENTS_FILE": str(path),
        "SNAKEPIT_TELEMETRY_HANDLERS": "itest_observability:record_events",
        "SNAKEPIT_HEARTBEAT_PING_INTERVAL_MS": "200", "SNAKEPIT_HEARTBEAT_TIMEOUT_MS": "300",
        "SNAKEPIT_HEARTBEAT_MAX_MISSED": "2",
        "SNAKEPIT_SESSION_DEFAULT_TTL": "1", "SNAKEPIT_SESSION_CLEANUP_INTERVAL": "200",
        "SNAKEPIT_SESSION_MAX_SESSIONS": "2", "SNAKEPIT_SESSION_WARNING_THRESHOLD": "0.5",
    })
    n.events_path = path
    app = make_app(n, session_default_ttl=1)
    sp.execute_in_session("s-quota", "measured", app=app)
    [warning] = wait_for(n, "snakepit", "session", "quota_warning")
    assert warning["measurements"] == {"count": 1, "limit": 2}
    assert warning["metadata"] == {"pool": n.pool, "threshold": 0.5}
    [expired] = wait_for(n, "snakepit", "session", "expired")
    assert expired["measurements"]["count"] == 1
    # a hung worker: missed pings, then killed
    pid = n.worker_pids()[0]
    os.kill(pid, signal.SIGSTOP)
    try:
        failures = wait_for(n, "snakepit", "heartbeat", "failure", count=2, pid=pid)
        assert [f["measurements"]["missed"] for f in failures[:2]] == [1, 2]
        wait_for(n, "snakepit", "heartbeat", "timeout", pid=pid)
        wait_for(n, "snakepit", "worker", "crash", pid=pid)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    # a full queue, refused in this process
    full = make_app(n, pool_max_queue_size=0)
    with pytest.raises(errors.QueueFull):
        sp.execute("measured", app=full)
    saturated = [(m, md) for e, m, md in caller_events if e == ("snakepit", "pool", "saturated")]
    assert saturated == [({"queued": 0, "max_queue_size": 0},
                          {"pool": n.pool, "queue": f"snakepit.pool.{n.pool}"})]
