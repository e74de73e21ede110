"""Every error reaches the caller as the same snakepit_tasks.errors class, whichever way the
call was made: execute(), execute_async(...).get(), or the task's delay(...).get()."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import assert_served_by, pool_table, unique_pool, wait_until

from snakepit_tasks import caller, connections, errors, kombu_redis

pytestmark = pytest.mark.timeout(120)

STYLES = ("execute", "execute_async", "delay")


def call(style: str, command: str, args: dict[str, Any] | None, pool: str, app: Any,
         timeout: float | None = None) -> Any:
    """Make one call the given way and wait for its result (bounded)."""
    if style == "execute":
        return caller.execute(command, args, pool=pool, timeout=timeout, app=app)
    if style == "execute_async":
        return caller.execute_async(command, args, pool=pool, timeout=timeout, app=app).get(
            timeout=60
        )
    task = app.tasks["snakepit.execute"]
    return task.delay(command, args, pool=pool, timeout=timeout).get(timeout=60)


def test_unknown_tool_is_tool_not_found(node):
    n = node()
    for style in STYLES:
        with pytest.raises(errors.ToolNotFound) as info:
            call(style, "no_such_tool", {}, n.pool, n.app)
        exc = info.value
        assert "no_such_tool" in str(exc), style
        available = exc.details["available"]
        assert {"ping", "echo", "add", "fail", "sleep"} <= set(available), style
        assert "no_such_tool" not in available
    assert_served_by(n, caller.execute("ping", app=n.app))


def test_tool_that_raises_is_adapter_error_and_worker_survives(node):
    n = node(pool_size=1)
    pid = assert_served_by(n, caller.execute("ping", app=n.app))
    for style in STYLES:
        with pytest.raises(errors.AdapterError) as info:
            call(style, "fail", {"message": f"boom-{style}", "kind": "KeyError"}, n.pool, n.app)
        exc = info.value
        assert isinstance(exc, errors.SnakepitError)
        assert exc.type == "KeyError", style
        assert f"boom-{style}" in str(exc)
        assert f"boom-{style}" in exc.details["message"]
        assert "Traceback" in exc.traceback and "KeyError" in exc.traceback
        assert "showcase.py" in exc.traceback and "in fail" in exc.traceback
        # The same process serves the next call: a tool error never costs the worker.
        assert caller.execute("ping", app=n.app)["pid"] == pid, style
    with pytest.raises(errors.AdapterError) as info:
        caller.execute("fail", {"kind": "NotABuiltin"}, app=n.app)
    assert info.value.type == "RuntimeError"
    assert assert_served_by(n, caller.execute("ping", app=n.app)) == pid


def test_unknown_pool_is_pool_not_found(make_app):
    served = pool_table(unique_pool())
    app = make_app(served)
    missing = unique_pool("missing")
    for style in STYLES:
        with pytest.raises(errors.PoolNotFound) as info:
            call(style, "ping", {}, missing, app)
        assert missing in str(info.value)
        assert info.value.details["pool"] == missing
        assert served["name"] in info.value.details["known"]


def test_configured_pool_without_node_fails_fast(make_app, redis_url):
    pool = unique_pool()
    app = make_app(pool)
    r = connections.redis_client(redis_url)
    for style in STYLES:
        with pytest.raises(errors.NoWorkersAvailable) as info:
            # no timeout given: the default is 300 s, so a hang would show as a test timeout
            call(style, "ping", {}, pool, app)
        assert pool in str(info.value) and "snakepit-tasks worker" in str(info.value)
    assert kombu_redis.queue_length(r, f"snakepit.pool.{pool}") == 0, "a message was sent anyway"


@pytest.mark.parametrize(
    "args, what",
    [({"x": object()}, "object"), ({"x": {1, 2}}, "set"), ({"x": float("nan")}, "nan"),
     (["not", "a", "dict"], "list")],
)
def test_unencodable_args_fail_before_sending(make_app, redis_url, args, what):
    # A configured pool with no node: a SerializationError (not NoWorkersAvailable) shows the
    # arguments are checked before anything else, and nothing reaches the queue.
    pool = unique_pool()
    app = make_app(pool)
    r = connections.redis_client(redis_url)
    for style in STYLES:
        with pytest.raises(errors.SerializationError):
            call(style, "echo", args, pool, app)
    assert kombu_redis.queue_length(r, f"snakepit.pool.{pool}") == 0


def test_timeout_is_execution_timeout_and_pool_recovers(node):
    n = node(pool_size=1)
    first = assert_served_by(n, caller.execute("ping", app=n.app))
    for style in STYLES:
        before = n.worker_pids()
        with pytest.raises(errors.ExecutionTimeout) as info:
            call(style, "sleep", {"seconds": 5}, n.pool, n.app, timeout=1)
        assert "sleep" in str(info.value), style
        # The stuck worker is replaced. Wait for the replacement before the next call: a call
        # sent at once can still hit the killed worker (see test_workerset.py, xfail BUG).
        wait_until(
            lambda b=before: n.worker_pids() and n.worker_pids() != b,
            timeout=30,
            message="the timed-out worker to be replaced",
        )
        pong = caller.execute("ping", app=n.app, timeout=60)
        assert pong["status"] == "pong"
        assert_served_by(n, pong)
    assert pong["pid"] != first, "the worker stuck in the tool should have been replaced"
    assert pong["worker_id"] == f"{n.name}/0"
    wait_until(lambda: caller.get_stats(n.pool, app=n.app)["available"] == 1, timeout=15)
