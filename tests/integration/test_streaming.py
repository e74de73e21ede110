"""Streaming: ordered chunks, halting, the iterator form, late readers in this and another
process, concurrent streams, errors and limits, and streams in a session."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from helpers import REPO, assert_served_by, subprocess_env, wait_until

import snakepit_tasks as sp
from snakepit_tasks import errors

pytestmark = pytest.mark.timeout(120)


def collect(command: str, args: dict[str, Any], app: Any, **kw: Any) -> tuple[list, Any]:
    """Run a streaming call; return (chunks, final result)."""
    chunks: list[dict[str, Any]] = []
    result = sp.execute_stream(command, args, chunks.append, app=app, **kw)
    return chunks, result


def check_count_chunks(chunks: list[dict[str, Any]], n: int, first: int = 1) -> None:
    assert [c["i"] for c in chunks] == list(range(first, n + 1))
    assert [c["_metadata"]["seq"] for c in chunks] == list(range(first, n + 1))
    assert all(c["is_final"] is False and c["of"] == n for c in chunks)
    assert len({c["_metadata"]["call_id"] for c in chunks}) <= 1


def test_chunks_arrive_in_order_and_non_dict_chunks_are_wrapped(node):
    n = node(pool_size=1)
    chunks, result = collect("stream_count", {"n": 100}, n.app, timeout=60)
    check_count_chunks(chunks, 100)
    assert result["count"] == 100
    assert_served_by(n, result)

    blobs, final = collect("stream_blob", {"size": 10}, n.app, timeout=60)
    assert [{k: v for k, v in c.items() if k != "_metadata"} for c in blobs] == [
        {"data": "x" * 10, "is_final": False}
    ]
    assert blobs[0]["_metadata"]["seq"] == 1
    assert final is None
    assert_served_by(n, sp.execute("ping", app=n.app))


def test_halt_stops_the_tool_and_frees_the_worker(node):
    n = node(pool_size=1)
    seen: list[dict[str, Any]] = []

    def until_third(chunk: dict[str, Any]) -> Any:
        seen.append(chunk)
        return sp.HALT if len(seen) == 3 else None

    result = sp.execute_stream(
        "stream_count", {"n": 50, "delay": 0.1}, until_third, app=n.app, timeout=60
    )
    assert [c["i"] for c in seen] == [1, 2, 3]
    assert result["halted"] is True and result["chunks"] >= 3

    # The worker is free at once: a short timeout would fail if the tool still ran (~5 s).
    pong = sp.execute("ping", app=n.app, timeout=5)
    assert_served_by(n, pong)
    # The tool really stopped: its stream holds far fewer than 50 chunks.
    task_id = seen[0]["_metadata"]["call_id"]
    late = sp.stream_result(task_id, app=n.app, timeout=30)
    written = list(late)
    assert 3 <= len(written) < 50
    assert late.result["halted"] is True


def test_stream_iterator_result_and_close_frees_the_worker(node):
    n = node(pool_size=1)
    call = sp.stream("stream_count", {"n": 5}, app=n.app, timeout=60)
    assert call.id
    chunks = list(call)
    check_count_chunks(chunks, 5)
    assert chunks[0]["_metadata"]["call_id"] == call.id
    assert call.result["count"] == 5
    assert_served_by(n, call.result)

    with sp.stream("stream_count", {"n": 50, "delay": 0.1}, app=n.app, timeout=60) as early:
        first_two = [next(early), next(early)]
        early.close()
    assert [c["i"] for c in first_two] == [1, 2]
    assert early.result["halted"] is True
    assert list(early) == [], "a closed stream yields nothing more"
    pong = sp.execute("ping", app=n.app, timeout=5)
    assert_served_by(n, pong)
    assert pong["pid"] == call.result["pid"]


LATE_READER = """
import json, sys
from snakepit_tasks import app, stream_result
a = app.configure(redis_url=sys.argv[1], pools=[{"name": sys.argv[2]}])
s = stream_result(sys.argv[3], after=int(sys.argv[4]), timeout=60, app=a)
chunks = list(s)
print(json.dumps({"chunks": chunks, "result": s.result}))
"""


def test_late_readers_in_this_and_another_process_and_resume(node, redis_url):
    n = node(pool_size=1)
    call = sp.stream("stream_count", {"n": 8}, app=n.app, timeout=60)
    chunks = list(call)
    check_count_chunks(chunks, 8)
    assert_served_by(n, call.result)

    again = sp.stream_result(call.id, app=n.app, timeout=30)
    assert list(again) == chunks and again.result == call.result
    resumed = sp.stream_result(call.id, after=3, app=n.app, timeout=30)
    tail = list(resumed)
    check_count_chunks(tail, 8, first=4)
    assert tail == chunks[3:] and resumed.result == call.result

    def other_process(after: int) -> dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, "-c", LATE_READER, redis_url, n.pool, call.id, str(after)],
            cwd=REPO,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    for after in (0, 3):
        seen = other_process(after)
        assert seen["chunks"] == chunks[after:]
        assert seen["result"] == call.result


def test_concurrent_streams_each_get_their_own_chunks(node):
    n = node(pool_size=2)
    sizes = [3 + 2 * i for i in range(10)]  # 3, 5, ..., 21: all distinct

    def run(size: int) -> tuple[list, Any]:
        return collect("stream_count", {"n": size, "delay": 0.01}, n.app, timeout=60)

    with ThreadPoolExecutor(len(sizes)) as ex:
        outcomes = list(ex.map(run, sizes))
    call_ids = set()
    for size, (chunks, result) in zip(sizes, outcomes, strict=True):
        check_count_chunks(chunks, size)
        call_ids.add(chunks[0]["_metadata"]["call_id"])
        assert result["count"] == size
        assert_served_by(n, result)
    assert len(call_ids) == len(sizes)
    assert {r["pid"] for _, r in outcomes} <= set(n.worker_pids())


def test_stream_failures_and_limits(node):
    n = node(pool_size=1)
    pid = assert_served_by(n, sp.execute("ping", app=n.app))

    # The tool raises after 3 chunks: the chunks arrive, then AdapterError.
    seen: list[dict[str, Any]] = []
    with pytest.raises(errors.AdapterError) as info:
        sp.execute_stream(
            "stream_fail", {"n": 3, "message": "broke at 3"}, seen.append, app=n.app, timeout=30
        )
    assert [c["i"] for c in seen] == [1, 2, 3]
    assert "broke at 3" in str(info.value) and info.value.type == "RuntimeError"
    assert sp.execute("ping", app=n.app, timeout=30)["pid"] == pid

    # A chunk over stream_max_chunk_bytes (4 MiB) is refused.
    with pytest.raises(errors.SerializationError) as big:
        collect("stream_blob", {"size": 5_000_000}, n.app, timeout=30)
    assert "stream_max_chunk_bytes" in str(big.value)
    assert big.value.details.get("limit") == 4 * 1024 * 1024
    assert sp.execute("ping", app=n.app, timeout=30)["pid"] == pid

    # The process dies mid-stream: WorkerCrashed, not a hang.
    crashed: list[dict[str, Any]] = []
    with pytest.raises(errors.WorkerCrashed):
        sp.execute_stream("stream_crash", {"n": 2}, crashed.append, app=n.app, timeout=30)
    assert [c["i"] for c in crashed] == [1, 2]
    new_pid = wait_until(
        lambda: [p for p in n.worker_pids() if p != pid],
        timeout=30,
        message="the crashed worker to be restarted",
    )[0]
    pong = sp.execute("ping", app=n.app, timeout=30)
    assert pong["pid"] == new_pid
    assert_served_by(n, pong)

    # The timeout bounds the whole stream (100 chunks × 0.2 s would take 20 s).
    timed: list[dict[str, Any]] = []
    with pytest.raises(errors.ExecutionTimeout):
        sp.execute_stream(
            "stream_count", {"n": 100, "delay": 0.2}, timed.append, app=n.app, timeout=1
        )
    assert len(timed) < 100


def test_stream_in_a_session_lands_on_the_bound_worker(node):
    n = node(pool_size=2)
    sid = f"s-{uuid.uuid4().hex[:12]}"
    chunks: list[dict[str, Any]] = []
    first = sp.execute_in_session_stream(
        sid, "stream_count", {"n": 3}, chunks.append, app=n.app, timeout=30
    )
    check_count_chunks(chunks, 3)
    assert_served_by(n, first)
    info = sp.sessions.get(sid, app=n.app)
    assert info is not None and info["worker"] == first["worker_id"]

    for _ in range(4):
        got: list[dict[str, Any]] = []
        result = sp.execute_in_session_stream(
            sid, "stream_count", {"n": 4}, got.append, app=n.app, timeout=30
        )
        check_count_chunks(got, 4)
        assert result["worker_id"] == info["worker"] and result["pid"] == first["pid"]
        pong = sp.execute_in_session(sid, "ping", app=n.app)
        assert pong["pid"] == first["pid"] and pong["session_id"] == sid
    iterated = sp.stream_in_session(sid, "stream_count", {"n": 2}, app=n.app, timeout=30)
    assert [c["i"] for c in iterated] == [1, 2]
    assert iterated.result["pid"] == first["pid"]
    assert sp.sessions.get(sid, app=n.app)["worker"] == info["worker"]


def test_a_tool_that_does_not_stream_yields_its_result_as_the_one_chunk(node):
    """stream()/execute_stream() of a plain tool: one chunk holding its result, which is also
    the stream's final result (README "Streaming")."""
    n = node(pool_size=1)
    chunks, result = collect("add", {"a": 2, "b": 40}, n.app, timeout=60)
    assert result == 42
    assert [{k: v for k, v in c.items() if k != "_metadata"} for c in chunks] == [
        {"data": 42, "is_final": False}
    ]
    assert chunks[0]["_metadata"]["seq"] == 1

    it = sp.stream("ping", app=n.app, timeout=60)
    [chunk] = list(it)
    assert chunk["status"] == "pong" and chunk["is_final"] is False
    assert it.result == {k: v for k, v in chunk.items() if k not in ("is_final", "_metadata")}
    assert_served_by(n, it.result)

    with pytest.raises(errors.AdapterError, match="no chunks for you"):
        collect("fail", {"message": "no chunks for you"}, n.app, timeout=60)
