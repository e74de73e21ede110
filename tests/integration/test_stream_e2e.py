"""Streaming through the real stack: order, halting, late readers, errors, sessions,
backpressure."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
from helpers import REPO, assert_served_by, subprocess_env

import snakepit_tasks as sp
from snakepit_tasks import errors

pytestmark = pytest.mark.timeout(120)


def test_hundred_chunks_in_order_then_the_result(node):
    n = node()
    chunks: list[dict] = []
    result = sp.execute_stream("stream_count", {"n": 100}, chunks.append, app=n.app)
    assert [c["i"] for c in chunks] == list(range(1, 101))
    assert [c["_metadata"]["seq"] for c in chunks] == list(range(1, 101))
    assert not any(c["is_final"] for c in chunks)
    assert result["count"] == 100
    assert_served_by(n, result)


def test_non_dict_chunks_arrive_under_data(node):
    n = node()
    chunks = list(sp.stream("stream_blob", {"size": 10}, app=n.app))
    assert chunks[0]["data"] == "x" * 10


def test_halt_at_chunk_three_stops_the_tool_and_frees_the_worker(node):
    n = node(pool_size=1)
    got: list[dict] = []

    def callback(chunk: dict) -> object:
        got.append(chunk)
        return sp.HALT if len(got) == 3 else None

    result = sp.execute_stream("stream_count", {"n": 50, "delay": 0.1}, callback, app=n.app)
    assert len(got) == 3
    assert result["halted"] is True
    # The only worker is free again: a call is served at once.
    assert_served_by(n, sp.execute("ping", timeout=5, app=n.app))


def test_iterator_close_frees_the_worker(node):
    n = node(pool_size=1)
    with sp.stream("stream_count", {"n": 50, "delay": 0.1}, app=n.app) as s:
        first = next(iter(s))
    assert first["i"] == 1
    assert_served_by(n, sp.execute("ping", timeout=5, app=n.app))


def test_a_late_reader_reads_every_chunk_and_can_resume(node):
    n = node()
    s = sp.stream("stream_count", {"n": 8}, app=n.app)
    assert [c["i"] for c in s] == list(range(1, 9))
    assert [c["i"] for c in sp.stream_result(s.id, app=n.app)] == list(range(1, 9))
    resumed = sp.stream_result(s.id, after=3, app=n.app)
    assert [c["i"] for c in resumed] == [4, 5, 6, 7, 8]
    assert resumed.result["count"] == 8

    # A second process attaches by task id alone.
    code = (
        "import json, sys, snakepit_tasks as sp\n"
        f"sp.configure(redis_url={n.app.snakepit_settings.redis_url!r})\n"
        f"print(json.dumps([c['i'] for c in sp.stream_result({s.id!r})]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True,
        text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == list(range(1, 9))


def test_ten_concurrent_streams_each_get_their_own_chunks(node):
    n = node(pool_size=2)
    results: dict[int, list[int]] = {}

    def run(count: int) -> None:
        results[count] = [c["i"] for c in sp.stream("stream_count", {"n": count}, app=n.app)]

    threads = [threading.Thread(target=run, args=(10 + i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert results == {10 + i: list(range(1, 11 + i)) for i in range(10)}


def test_an_error_mid_stream_after_the_chunks_already_made(node):
    n = node()
    got: list[dict] = []
    with pytest.raises(errors.AdapterError) as info:
        sp.execute_stream("stream_fail", {"n": 3, "message": "boom"}, got.append, app=n.app)
    assert [c["i"] for c in got] == [1, 2, 3]
    assert info.value.type == "RuntimeError"
    assert "boom" in str(info.value)


def test_a_crash_mid_stream_is_worker_crashed_not_a_hang(node):
    n = node()
    got: list[dict] = []
    with pytest.raises(errors.WorkerCrashed):
        sp.execute_stream("stream_crash", {"n": 2}, got.append, timeout=60, app=n.app)
    assert [c["i"] for c in got] == [1, 2]


def test_a_chunk_over_the_limit_fails_the_stream_clearly(node):
    n = node()
    with pytest.raises(errors.SerializationError) as info:
        list(sp.stream("stream_blob", {"size": 5_000_000}, app=n.app))
    assert "stream_max_chunk_bytes" in str(info.value)


def test_timeout_bounds_the_whole_stream(node):
    n = node()
    with pytest.raises(errors.ExecutionTimeout):
        sp.execute_stream(
            "stream_count", {"n": 100, "delay": 0.2}, lambda c: None, timeout=1, app=n.app
        )


def test_a_session_stream_lands_on_the_bound_worker(node):
    n = node(pool_size=2)
    bound = sp.execute_in_session("st", "ping", app=n.app)["worker_id"]
    for _ in range(3):
        result = sp.execute_in_session_stream("st", "stream_count", {"n": 3}, lambda c: None,
                                              app=n.app)
        assert result["worker_id"] == bound
        assert_served_by(n, result)


def test_a_slow_reader_loses_nothing_however_long_the_stream(node):
    # The node may keep only 200 chunks in Redis: it must wait for the reader, not trim.
    n = node(env={"SNAKEPIT_STREAM_MAX_LEN": "200"})
    got = []
    for chunk in sp.stream("stream_count", {"n": 1500}, app=n.app):
        got.append(chunk["i"])
        if chunk["i"] % 250 == 0:
            threading.Event().wait(0.3)  # a slow consumer
    assert got == list(range(1, 1501))
