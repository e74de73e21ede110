"""snakepit_tasks.caller against a real node: execute, execute_async, get_result, stats."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO, assert_served_by, subprocess_env, unique_pool, wait_until

from snakepit_tasks import caller, errors

pytestmark = pytest.mark.timeout(120)


def test_ping_echo_add(node):
    n = node(pool_size=2)
    pong = caller.execute("ping", app=n.app)
    assert pong["status"] == "pong"
    assert pong["worker_id"] in caller.list_workers(n.pool, app=n.app)
    assert sorted(caller.list_workers(n.pool, app=n.app)) == [f"{n.name}/0", f"{n.name}/1"]
    assert_served_by(n, pong)

    # The pool named explicitly gives the same answer as the default pool.
    assert caller.execute("ping", pool=n.pool, app=n.app)["status"] == "pong"

    payload = {"text": "héllo", "n": 3, "items": [1, 2.5, None, True], "nested": {"k": ["v"]}}
    assert caller.execute("echo", payload, app=n.app) == payload
    assert caller.execute("echo", app=n.app) == {}
    assert caller.execute("add", {"a": 2, "b": 40}, app=n.app) == 42
    assert caller.execute("add", {"a": 0.5, "b": 0.25}, app=n.app) == 0.75


def test_execute_async_get_equals_execute(node):
    n = node()
    sync = caller.execute("add", {"a": 20, "b": 22}, app=n.app)
    result = caller.execute_async("add", {"a": 20, "b": 22}, app=n.app)
    assert result.id
    assert result.get(timeout=30) == sync == 42

    pong = caller.execute_async("ping", pool=n.pool, app=n.app).get(timeout=30)
    assert pong["status"] == "pong"
    assert_served_by(n, pong)

    # wait() is the bounded form of .get()
    assert caller.wait(caller.execute_async("echo", {"x": 1}, app=n.app), 30) == {"x": 1}


def test_result_polled_by_another_process(node, redis_url):
    """A second process (another web worker, say) reads the result by task id alone."""
    n = node()
    result = caller.execute_async("sleep", {"seconds": 0.5}, app=n.app)
    code = (
        "import json, sys\n"
        "from snakepit_tasks import app, caller\n"
        "a = app.configure(redis_url=sys.argv[1], pools=[{'name': sys.argv[2]}])\n"
        "r = caller.get_result(sys.argv[3], app=a)\n"
        "print(json.dumps({'id': r.id, 'value': r.get(timeout=60)}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, redis_url, n.pool, result.id],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    other = json.loads(proc.stdout.strip().splitlines()[-1])
    mine = result.get(timeout=30)
    assert other == {"id": result.id, "value": mine}
    assert mine["slept"] == 0.5
    assert_served_by(n, mine)

    # get_result in this process too, by id only
    again = caller.get_result(result.id, app=n.app)
    assert again.get(timeout=30) == mine


def test_stats_count_requests_and_errors(node):
    n = node(pool_size=2)
    before = caller.get_stats(n.pool, app=n.app)
    assert before["pool"] == n.pool
    assert before["requests"] == 0 and before["errors"] == 0
    assert before["nodes"] == 1 and before["workers"] == 2 and before["capacity"] == 2
    for key in ("busy", "available", "queued", "queue_timeouts", "pool_saturated"):
        assert key in before

    assert_served_by(n, caller.execute("ping", app=n.app))
    caller.execute("add", {"a": 1, "b": 1}, app=n.app)
    with pytest.raises(errors.AdapterError):
        caller.execute("fail", {"kind": "ValueError"}, app=n.app)
    with pytest.raises(errors.ToolNotFound):
        caller.execute("no_such_tool", app=n.app)

    stats = caller.get_stats(n.pool, app=n.app)
    assert stats["requests"] == 4
    assert stats["errors"] == 2
    # The lease is republished every second: wait for the idle picture.
    wait_until(
        lambda: caller.get_stats(n.pool, app=n.app)["available"] == 2,
        timeout=15,
        message="both workers available again",
    )
    idle = caller.get_stats(n.pool, app=n.app)
    assert idle["busy"] == 0 and idle["queued"] == 0 and idle["workers"] == 2


def test_await_ready_times_out_without_nodes(make_app):
    pool = unique_pool()
    app = make_app(pool)
    with pytest.raises(TimeoutError, match=pool):
        caller.await_ready(pool, timeout=0.5, app=app)
    assert caller.list_workers(pool, app=app) == []
    stats = caller.get_stats(pool, app=app)
    assert stats["nodes"] == 0 and stats["workers"] == 0 and stats["available"] == 0


def test_default_app_after_configure(node):
    """Without app=, the caller API uses the app configure() installed."""
    n = node()
    assert n.app is not None
    pong = caller.execute("ping")
    assert_served_by(n, pong)
    assert caller.list_workers() == [f"{n.name}/0"]
    assert caller.await_ready(timeout=5) == [f"{n.name}/0"]
    assert os.getpid() != pong["pid"]
