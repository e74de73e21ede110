"""Chaos: Redis (state, broker and result backend at once) is SIGKILLed while calls run, then
started again on the same port, empty.

Calls in flight must end with a snakepit error (or their result), never a hang or a raw redis
exception; calls made while Redis is down fail with RedisUnavailable; once Redis is back, the
node re-publishes its lease (every second) and the pool serves again, within a bound.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import descendants, wait_until

import snakepit_tasks as sp
from snakepit_tasks import app as app_module
from snakepit_tasks import connections, errors, keys, pool_state
from snakepit_tasks.embedded_redis import EmbeddedRedis, free_port

from .test_chaos_support import chaos_nodes

pytestmark = pytest.mark.timeout(180)

BOUND = 60.0


@pytest.fixture
def chaos_node(node: Any, pids: Any, tmp_path: Path) -> Iterator[Any]:
    yield from chaos_nodes(node, pids, tmp_path)


@pytest.fixture
def private_redis() -> Iterator[list[EmbeddedRedis]]:
    """A list holding the current private server (a restart appends the new one)."""
    servers = [EmbeddedRedis(port=free_port()).start()]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def ready_workers(r: Any, pool: str) -> list[dict[str, Any]]:
    nodes = pool_state.live_nodes(r, pool)
    return [w for n in nodes for w in n["workers"] if w["state"] == "ready"]


def serves(app: Any) -> dict[str, Any] | None:
    try:
        return sp.execute("ping", timeout=5, app=app)  # type: ignore[no-any-return]
    except errors.SnakepitError:
        return None


def test_a_redis_restart_under_load_ends_calls_cleanly_and_the_pool_serves_again(
    chaos_node: Any, make_app: Any, private_redis: list[EmbeddedRedis]
) -> None:
    server = private_redis[0]
    port = server.port
    n = chaos_node(wait=False, pool_size=2, env={"SNAKEPIT_REDIS_URL": server.url})
    try:
        app = app_module.configure(redis_url=server.url, pools=[n.table])
        sp.await_ready(n.pool, timeout=BOUND, app=app)
        r = connections.redis_client(server.url)
        wait_until(lambda: len(ready_workers(r, n.pool)) == 2, timeout=BOUND,
                   message="two ready workers")
        for w in ready_workers(r, n.pool):
            chaos_node.remember(int(w["pid"]))

        outcomes: dict[int, Any] = {}

        def call(i: int) -> None:
            try:
                outcomes[i] = sp.execute("sleep", {"seconds": 3}, timeout=20, app=app)
            except BaseException as exc:  # kept whatever it is: the test checks the class
                outcomes[i] = exc

        callers = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(3)]
        for t in callers:
            t.start()
        wait_until(lambda: sum(int(v) for v in r.hvals(keys.busy(n.name))) >= 2, timeout=30,
                   message="two calls running")

        assert server.process is not None
        server.process.kill()  # SIGKILL: no shutdown, everything in memory lost
        server.process.wait(10)
        server.stop()
        with pytest.raises(errors.RedisUnavailable):  # while it is down: a clean error
            sp.execute("ping", timeout=5, app=app)
        private_redis.append(EmbeddedRedis(port=port).start())

        for t in callers:
            t.join(BOUND)
        assert not any(t.is_alive() for t in callers), f"a caller hangs: {outcomes}"
        assert len(outcomes) == 3
        for i, got in outcomes.items():
            assert isinstance(got, dict | errors.SnakepitError), (
                f"call {i} ended with a raw {type(got).__name__}: {got!r}")
            if isinstance(got, dict):
                assert got["slept"] == 3

        sp.await_ready(n.pool, timeout=BOUND, app=app)  # the lease is back
        result = wait_until(lambda: serves(app), timeout=BOUND,
                            message="the pool serving again after the restart")
        assert result["status"] == "pong"
        assert n.proc.poll() is None, "the node must survive a Redis restart"
        assert int(result["pid"]) in descendants(n.pid)
        for _ in range(3):
            assert sp.execute("ping", timeout=30, app=app)["status"] == "pong"
    finally:
        n.stop()  # while Redis is up: a clean shutdown
