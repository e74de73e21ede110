"""Queue limits: a call no worker takes within pool_queue_timeout fails with QueueTimeout and
never runs (counted once); pool_max_queue_size refuses calls at send time (QueueFull)."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import helpers
import pytest
from celery.exceptions import TimeoutError as CeleryTimeoutError
from helpers import assert_served_by, wait_until

import snakepit_tasks as sp
from snakepit_tasks import app as app_module
from snakepit_tasks import connections, errors, keys, kombu_redis

pytestmark = pytest.mark.timeout(120)


# -- local fixtures and helpers -------------------------------------------------------------
def configure(redis_url: str, n: helpers.NodeHandle, **settings: Any) -> Any:
    """The process-wide caller app for ``n``'s pool, with extra settings."""
    return app_module.configure(redis_url=redis_url, pools=[n.table], **settings)


def occupy(n: helpers.NodeHandle, app: Any, seconds: float) -> Any:
    """Keep ``n``'s only worker busy for ``seconds``; return the call's AsyncResult once the
    node has started it."""
    result = sp.execute_async("sleep", {"seconds": seconds}, app=app, timeout=60)
    r = connections.redis_client(n.redis_url)
    wait_until(
        lambda: sum(int(v) for v in r.hvals(keys.busy(n.name))) >= 1,
        timeout=15,
        message="the worker to be busy",
    )
    return result


def recall(app: Any, key: str) -> dict[str, Any]:
    return sp.execute("recall", {"key": key}, app=app, timeout=30)


# -- queue timeout --------------------------------------------------------------------------
def test_queue_timeout_call_never_runs_and_is_counted_once(node, node_env, redis_url):
    node_env["SNAKEPIT_POOL_QUEUE_TIMEOUT"] = "1000"
    n = node(pool_size=1)
    app = configure(redis_url, n, pool_queue_timeout=1000)
    before = sp.get_stats(n.pool, app=app)["queue_timeouts"]
    keys_ = [f"k-{uuid.uuid4().hex}" for _ in range(2)]

    sleeper = occupy(n, app, 3)
    # Two synchronous calls wait behind it (one on the node's spare thread, one in Redis).
    with ThreadPoolExecutor(2) as ex:
        futures = [
            ex.submit(sp.execute, "remember", {"key": k, "value": 1}, app=app, timeout=30)
            for k in keys_
        ]
        for f in futures:
            # decided by the caller or by the node, whichever comes first
            with pytest.raises(errors.QueueTimeout):
                f.result(timeout=60)

    slept = sleeper.get(timeout=30)
    assert_served_by(n, slept)
    for k in keys_:  # the worker is free now: the timed-out calls did not run, not even late
        got = recall(app, k)
        assert got["found"] is False, f"a call that timed out in the queue ran: {got}"
        assert got["pid"] == slept["pid"]
    assert_served_by(n, got)
    assert sp.get_stats(n.pool, app=app)["queue_timeouts"] == before + 2


def test_async_call_waiting_past_queue_timeout_fails_and_never_runs(node, node_env, redis_url):
    node_env["SNAKEPIT_POOL_QUEUE_TIMEOUT"] = "1000"
    n = node(pool_size=1)
    app = configure(redis_url, n, pool_queue_timeout=1000)
    before = sp.get_stats(n.pool, app=app)["queue_timeouts"]
    key = f"k-{uuid.uuid4().hex}"

    sleeper = occupy(n, app, 3)
    late = sp.execute_async("remember", {"key": key, "value": 1}, app=app, timeout=30)
    with pytest.raises(errors.QueueTimeout):
        try:
            late.get(timeout=60)
        except CeleryTimeoutError:
            pytest.fail(
                f"no outcome for the late call {late.id} (state {late.state}); "
                f"node output:\n{n.output()}"
            )
    slept = sleeper.get(timeout=30)
    assert_served_by(n, slept)
    got = recall(app, key)
    assert got["found"] is False and got["pid"] == slept["pid"]
    assert_served_by(n, got)
    assert sp.get_stats(n.pool, app=app)["queue_timeouts"] == before + 1


# -- queue size -----------------------------------------------------------------------------
def test_queue_full_is_raised_at_send_time_and_counted(node, redis_url):
    n = node(pool_size=1)
    app = configure(redis_url, n, pool_max_queue_size=2)
    r = connections.redis_client(redis_url)
    queue = keys.pool_queue(n.pool)
    assert sp.get_stats(n.pool, app=app)["pool_saturated"] == 0

    sleeper = occupy(n, app, 2)
    sent = []
    with pytest.raises(errors.QueueFull) as info:
        for _ in range(10):
            sent.append(sp.execute_async("ping", app=app, timeout=60))
    assert 2 <= len(sent) < 10
    assert info.value.details["queued"] >= 2
    assert "pool_max_queue_size" in str(info.value)
    # Refused before sending: nothing was added to the queue by the refused call.
    assert kombu_redis.queue_length(r, queue) <= info.value.details["queued"]
    assert sp.get_stats(n.pool, app=app)["pool_saturated"] == 1

    assert_served_by(n, sleeper.get(timeout=30))
    for result in sent:  # the accepted ones run once the worker is free
        assert_served_by(n, result.get(timeout=30))
