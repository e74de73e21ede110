"""Scripts that bring their own pool: ``run_as_script(main)`` and ``cleanup()``.

``run_as_script`` starts a node for each configured pool that no live node serves (and an
embedded Redis when none answers at ``redis_url`` and none is configured), runs ``fn``, then
stops what it started, leaving no process behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import redis

from . import app as app_module
from . import caller, connections, pool_state, processes
from .embedded_redis import EmbeddedRedis
from .errors import ConfigurationError

EXIT_MODES = ("none", "stop", "halt")
STOP_MODES = ("if_started", "always", "never")

_lock = threading.Lock()
_nodes: list[subprocess.Popen[bytes]] = []
_embedded: EmbeddedRedis | None = None


def start_pools(pools: list[str] | None = None, *, timeout: float = 30.0) -> list[int]:
    """Start a local node for every pool (of ``pools``, default all configured) that no live
    node serves; wait until each is ready. Returns the pids of the nodes started."""
    global _embedded
    app = app_module.default_app()
    settings = app.snakepit_settings
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore:You're running the worker with superuser privileges")
    env["SNAKEPIT_WATCH_PID"] = str(os.getpid())
    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        if os.environ.get("SNAKEPIT_REDIS_URL") or os.environ.get("SNAKEPIT_CONFIG"):
            raise ConfigurationError(
                f"cannot reach Redis at {settings.redis_url} ({exc}); start it or unset "
                "SNAKEPIT_REDIS_URL to use an embedded one"
            ) from None
        with _lock:
            _embedded = EmbeddedRedis().start()
        app = app_module.configure(settings.replace(redis_url=_embedded.url))
        settings = app.snakepit_settings
    env["SNAKEPIT_REDIS_URL"] = settings.redis_url
    r = connections.redis_client(settings.redis_url)
    started = []
    for pool in pools or [p.name for p in settings.pools]:
        if pool_state.pool_is_alive(r, pool):
            continue
        node = subprocess.Popen(
            [sys.executable, "-m", "snakepit_tasks", "worker", "--pool", pool,
             "--loglevel", "warning"],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        with _lock:
            _nodes.append(node)
        started.append(node.pid)
        caller.await_ready(pool, timeout=timeout, app=app)
    return started


def cleanup(timeout: float = 10.0) -> dict[str, Any]:
    """Stop the nodes and embedded Redis this process started; close its connections.

    Returns ``{"ok": True}``, or ``{"ok": False, "timeout": [pids]}`` for processes that had
    to be killed after ``timeout`` seconds.
    """
    global _embedded
    with _lock:
        nodes, _nodes[:] = list(_nodes), []
        embedded, _embedded = _embedded, None
    killed = [e.pid for e in processes.terminate_all(nodes, timeout) if e.killed]
    app_module.reset_default_app()
    connections.close_clients()
    if embedded is not None:
        embedded.stop()
    return {"ok": True} if not killed else {"ok": False, "timeout": killed}


def run_as_script(
    fn: Callable[..., Any],
    *args: Any,
    exit_mode: str = "none",
    stop_mode: str = "if_started",
    cleanup_timeout: float = 10.0,
    pools: list[str] | None = None,
    **kwargs: Any,
) -> Any:
    """Run ``fn(*args, **kwargs)`` with the pools up, then clean up.

    ``stop_mode``: "if_started" stops only what this call started, "always" also closes this
    process's connections when nothing was started, "never" leaves the nodes running.
    ``exit_mode``: "none" returns ``fn``'s result (or raises its error), "stop" exits the
    interpreter with status 0 or 1 (``sys.exit``), "halt" exits at once (``os._exit``).
    """
    if exit_mode not in EXIT_MODES:
        raise ValueError(f"exit_mode must be one of {', '.join(EXIT_MODES)}, got {exit_mode!r}")
    if stop_mode not in STOP_MODES:
        raise ValueError(f"stop_mode must be one of {', '.join(STOP_MODES)}, got {stop_mode!r}")
    started = start_pools(pools)
    status = 1
    try:
        result = fn(*args, **kwargs)
        status = 0
    except BaseException:
        if exit_mode == "none":
            raise
        import traceback

        traceback.print_exc()
        result = None
    finally:
        if stop_mode == "always" or (stop_mode == "if_started" and (started or _embedded)):
            cleanup(cleanup_timeout)
    if exit_mode == "stop":
        sys.exit(status)
    if exit_mode == "halt":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return result
