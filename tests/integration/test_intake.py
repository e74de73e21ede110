"""The Celery lane's intake on a real node: the consumer takes pool-queue messages itself, a
node-queue message wakes it, and a message sent with a priority (a kombu sub-list) is served
too; every call runs once, on one of the node's workers, and no intake list keeps anything."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import assert_served_by, wait_until

import snakepit_tasks as sp
from snakepit_tasks import connections, keys, kombu_redis
from snakepit_tasks.call import TASK_NAME
from snakepit_tasks.queues import declare_queue

pytestmark = pytest.mark.timeout(120)


def intake_lists(node: Any) -> list[str]:
    name = node.name
    return [keys.intake_staging(name), keys.intake_pulled(name),
            *(keys.intake_feeding(name, q) for q in (keys.pool_queue(node.pool),
                                                      keys.node_queue(name)))]


def test_calls_with_priorities_and_pinned_calls_all_run_and_leave_no_intake_entry(
    node: Any, redis_url: str,
) -> None:
    n = node(pool_size=1)
    r = connections.redis_client(redis_url)
    task = n.app.tasks[TASK_NAME]
    pool_queue = declare_queue(keys.pool_queue(n.pool))
    node_queue = declare_queue(keys.node_queue(n.name))
    sent = [task.apply_async((), {"command": "ping", "pool": n.pool}, queue=pool_queue,
                             priority=priority) for priority in (0, 3, 6, 9)]
    # Pinned to this node's own queue (what a session's call or a reroute does): the
    # consumer waits on the pool queue meanwhile and is woken for them.
    sent += [task.apply_async((), {"command": "ping", "pool": n.pool}, queue=node_queue)
             for _ in range(3)]
    sent += [sp.execute_async("ping", pool=n.pool, app=n.app) for _ in range(3)]
    results = [s.get(timeout=60) for s in sent]
    for result in results:
        assert_served_by(n, result)
    assert len({s.id for s in sent}) == len(sent)
    assert all(kombu_redis.queue_length(r, q.name) == 0 for q in (pool_queue, node_queue))
    wait_until(lambda: not any(r.exists(k) for k in intake_lists(n)), timeout=10,
               message="the intake lists empty once the node is idle")
