"""snakepit_tasks.node.prestart: which command lines start a zygote at once, and when the node
step adopts it (no process is started here: the zygote is a stand-in)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from snakepit_tasks.config import load_settings
from snakepit_tasks.errors import ConfigurationError
from snakepit_tasks.node import prestart

CELERY = "/venv/lib/python3.11/site-packages/celery/__main__.py"


@pytest.mark.parametrize("argv, pool", [
    ([CELERY, "-A", "snakepit_tasks.node.entry", "worker", "--snakepit-pool", "gpu"], "gpu"),
    (["/venv/bin/celery", "--app=snakepit_tasks.node.entry", "-q", "worker", "-n", "a@h",
      "--snakepit-pool=cpu", "-l", "info"], "cpu"),
    ([CELERY, "-A", "snakepit_tasks.node.entry", "-b", "redis://x", "worker"], ""),
    # not a worker, or one that forks away or starts nothing
    ([CELERY, "-A", "snakepit_tasks.node.entry", "flower", "--port=5555"], None),
    ([CELERY, "-A", "worker", "inspect", "ping"], None),
    ([CELERY, "-A", "snakepit_tasks.node.entry", "worker", "--detach"], None),
    ([CELERY, "-A", "snakepit_tasks.node.entry", "worker", "-D"], None),
    ([CELERY, "-A", "snakepit_tasks.node.entry", "worker", "--help"], None),
    # not Celery's program (a test run, the supervisor, an app that imports the entry)
    (["/venv/bin/pytest", "worker"], None),
    (["/venv/bin/snakepit-tasks", "worker"], None),
    ([], None),
])
def test_only_a_foreground_celery_worker_starts_a_zygote_early(argv: list[str],
                                                               pool: str | None) -> None:
    assert prestart.worker_pool(argv) == pool


def test_the_pool_is_the_option_then_the_variable_then_the_first(monkeypatch: Any) -> None:
    settings = load_settings(pools=[{"name": "a"}, {"name": "b"}])
    monkeypatch.delenv("SNAKEPIT_NODE_POOL", raising=False)
    assert prestart.node_pool(settings, None).name == "a"
    monkeypatch.setenv("SNAKEPIT_NODE_POOL", "b")
    assert prestart.node_pool(settings, None).name == "b"
    assert prestart.node_pool(settings, "a").name == "a"
    with pytest.raises(ConfigurationError, match="pool 'c' is not configured"):
        prestart.node_pool(settings, "c")


def test_nothing_starts_for_spawn_an_unknown_pool_or_another_command() -> None:
    argv = [CELERY, "-A", "snakepit_tasks.node.entry", "worker", "--snakepit-pool", "x"]
    spawn = load_settings(pools=[{"name": "x"}], worker_start_method="spawn")
    assert prestart.start(spawn, argv) is None
    unknown = load_settings(pools=[{"name": "y"}])
    assert prestart.start(unknown, argv) is None  # the node step raises, as before
    assert prestart.start(load_settings(pools=[{"name": "x"}]), ["/venv/bin/pytest"]) is None


class FakeZygote:
    def __init__(self) -> None:
        self.name = "x"
        self.stopped = False
        self.forwarded = False

    def stop(self) -> None:
        self.stopped = True

    def forward_output(self) -> None:
        self.forwarded = True


def early(pool: str = "x", env: dict[str, str] | None = None,
          pid: int | None = None) -> prestart.EarlyZygote:
    return prestart.EarlyZygote(FakeZygote(), pool, env or {"A": "1"},  # type: ignore[arg-type]
                                os.getpid() if pid is None else pid)


def test_the_node_step_adopts_the_zygote_started_for_its_pool() -> None:
    pool = load_settings(pools=[{"name": "x"}]).pool("x")
    started = early()
    # Celery's logging set-up adds its own variables meanwhile: still the same zygote.
    env = {"A": "1", "CELERY_LOG_LEVEL": "30", "_MP_FORK_LOGFORMAT_": "%(message)s"}
    adopted = prestart.adopt(started, pool, env, "x@host")
    assert adopted is started.zygote and adopted.name == "x@host"
    assert started.zygote.forwarded and not started.zygote.stopped  # type: ignore[attr-defined]


@pytest.mark.parametrize("started", [early(pool="other"), early(env={"A": "2"})])
def test_a_zygote_started_for_something_else_is_stopped(started: prestart.EarlyZygote) -> None:
    pool = load_settings(pools=[{"name": "x"}]).pool("x")
    assert prestart.adopt(started, pool, {"A": "1"}, "x@host") is None
    assert started.zygote.stopped  # type: ignore[attr-defined]


def test_a_copy_of_the_process_leaves_the_zygote_alone() -> None:
    pool = load_settings(pools=[{"name": "x"}]).pool("x")
    started = early(pid=os.getpid() + 1)  # as in a daemonized worker
    assert prestart.adopt(started, pool, {"A": "1"}, "x@host") is None
    assert not started.zygote.stopped  # type: ignore[attr-defined]
    assert prestart.adopt(None, pool, {"A": "1"}, "x@host") is None
