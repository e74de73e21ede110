"""snakepit_tasks.tasks: the Celery task callers use directly (delay, apply_async, canvas)."""

from __future__ import annotations

import pytest
from celery import chain, group
from helpers import assert_served_by, pool_table, unique_pool

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def served(node, make_app):
    """A node serving a pool that is NOT the default one (calls must name it)."""
    n = node()
    default = pool_table(unique_pool("dflt"))  # configured first = default, never served
    app = make_app(default, n.table)
    assert app.snakepit_settings.default_pool_name == default["name"]
    return n


def test_delay_and_apply_async_route_to_named_pool(served):
    from snakepit_tasks.tasks import execute

    pool = served.pool
    pong = execute.delay("ping", {}, pool=pool).get(timeout=30)
    assert pong["status"] == "pong"
    assert_served_by(served, pong)

    pong = execute.apply_async(("ping", {}), {"pool": pool}).get(timeout=30)
    assert_served_by(served, pong)

    assert execute.delay("add", {"a": 1, "b": 2}, pool=pool).get(timeout=30) == 3
    assert execute.delay("echo", {"k": [1, 2]}, pool=pool, timeout=20).get(timeout=30) == {
        "k": [1, 2]
    }


def test_task_is_the_default_apps_task(served):
    from snakepit_tasks import default_app
    from snakepit_tasks.tasks import execute

    assert execute.app is default_app()
    assert execute.name == "snakepit.execute"


def test_group_of_calls(served):
    from snakepit_tasks.tasks import execute

    pool = served.pool
    job = group(execute.si("add", {"a": i, "b": 1}, pool=pool) for i in range(5))
    assert job.apply_async().get(timeout=60) == [1, 2, 3, 4, 5]

    pongs = group(execute.si("ping", pool=pool) for _ in range(3))().get(timeout=60)
    for pong in pongs:
        assert_served_by(served, pong)


def test_chain_of_immutable_calls(served):
    from snakepit_tasks.tasks import execute

    pool = served.pool
    result = chain(
        execute.si("add", {"a": 1, "b": 2}, pool=pool),
        execute.si("echo", {"step": 2}, pool=pool),
        execute.si("ping", pool=pool),
    )()
    pong = result.get(timeout=60)
    assert_served_by(served, pong)
    assert result.parent.get(timeout=30) == {"step": 2}
    assert result.parent.parent.get(timeout=30) == 3
