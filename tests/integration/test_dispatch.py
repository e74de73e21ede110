"""A node's hand-off: a call waiting for one busy (pinned) worker never leaves another worker
of the same node idle while other calls wait."""

from __future__ import annotations

import pytest
from helpers import assert_served_by, wait_until

from snakepit_tasks import caller, connections, keys, sessions

pytestmark = pytest.mark.timeout(120)


def test_waiting_for_a_busy_pinned_worker_does_not_idle_the_other(node):
    n = node(pool_size=2)
    r = connections.redis_client(n.app.snakepit_settings.redis_url)
    bound = caller.execute_in_session("pinned", "ping", app=n.app)["worker_id"]
    assert sessions.get("pinned", app=n.app)["worker"] == bound

    # The bound worker is busy; two more calls of the session wait for it (strict_queue)...
    busy = caller.execute_in_session_async(
        "pinned", "sleep", {"seconds": 4}, affinity="strict_queue", app=n.app
    )
    wait_until(lambda: int(r.hget(keys.busy(n.name), bound) or 0) >= 1, timeout=15)
    waiting = [
        caller.execute_in_session_async("pinned", "ping", affinity="strict_queue", app=n.app)
        for _ in range(2)
    ]
    # ...while plain calls are all served by the other worker before the sleep ends.
    for _ in range(5):
        pong = caller.execute("ping", timeout=30, app=n.app)
        assert pong["worker_id"] != bound
        assert_served_by(n, pong)
    assert not busy.ready(), "plain calls should not have waited for the busy worker"
    assert busy.get(timeout=30)["worker_id"] == bound
    assert {w.get(timeout=30)["worker_id"] for w in waiting} == {bound}
