"""``snakepit-tasks demo``: a pool of showcase workers, calls, a session, a stream, then a
clean stop; nothing of Celery's own output shows."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from . import app as app_module
from . import caller, processes, sessions
from .config import PoolConfig, load_settings
from .embedded_redis import EmbeddedRedis
from .errors import SnakepitError
from .streaming.api import stream

#: How long the demo's node gets to stop on SIGTERM before SIGKILL.
NODE_STOP_SECONDS = 30.0


def _say(title: str, value: Any = None) -> None:
    line = f"  {title}"
    if value is not None:
        line += f"  →  {value}"
    print(line, flush=True)


def run_demo(pool_size: int = 2) -> int:
    """Run the demo; return the exit code."""
    redis_url = os.environ.get("SNAKEPIT_REDIS_URL")
    embedded: EmbeddedRedis | None = None
    node: subprocess.Popen[bytes] | None = None
    print("snakepit-tasks demo", flush=True)
    try:
        if not redis_url:
            embedded = EmbeddedRedis().start()
            redis_url = embedded.url
            _say(f"embedded redis-server started on {redis_url} (pid {embedded.process.pid})")  # type: ignore[union-attr]
        else:
            _say(f"using Redis at {redis_url}")
        pools = [PoolConfig(name="demo", adapter="adapters.showcase:ShowcaseAdapter",
                            pool_size=pool_size)]
        settings = load_settings(redis_url=redis_url, pools=pools)
        env = dict(
            os.environ,
            # Running as root is common in containers; the demo need not warn about it.
            PYTHONWARNINGS="ignore:You're running the worker with superuser privileges",
            SNAKEPIT_WATCH_PID=str(os.getpid()),
            SNAKEPIT_REDIS_URL=redis_url,
            SNAKEPIT_POOLS='[{"name": "demo", "adapter": "adapters.showcase:ShowcaseAdapter", '
            f'"pool_size": {pool_size}}}]',
        )
        started = time.monotonic()
        node = subprocess.Popen(
            [sys.executable, "-m", "snakepit_tasks", "worker", "--pool", "demo",
             "--loglevel", "warning"],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        app = app_module.configure(settings)
        workers = caller.await_ready("demo", timeout=30, app=app)
        _say(f"node started with {len(workers)} workers in "
             f"{(time.monotonic() - started) * 1000:.0f} ms", ", ".join(workers))

        print("\ncalls", flush=True)
        pong = caller.execute("ping", app=app)
        _say("execute('ping')", f"{pong['status']} from {pong['worker_id']} (pid {pong['pid']})")
        _say("execute('echo', {'hello': 'world'})",
             caller.execute("echo", {"hello": "world"}, app=app))
        _say("execute('add', {'a': 2, 'b': 40})", caller.execute("add", {"a": 2, "b": 40}, app=app))
        try:
            caller.execute("fail", {"message": "something broke", "kind": "ValueError"}, app=app)
        except SnakepitError as exc:
            _say("execute('fail') raised", f"{type(exc).__name__}: {exc}")
        try:
            caller.execute("no_such_tool", app=app)
        except SnakepitError as exc:
            _say("execute('no_such_tool') raised", f"{type(exc).__name__}")
        result = caller.execute_async("sleep", {"seconds": 0.3}, app=app)
        _say("execute_async('sleep', 0.3 s)", f"task id {result.id}, state {result.state}")
        polls = 0
        while not result.ready():
            polls += 1
            time.sleep(0.05)
        _say(f"polled {polls} times, then .get()", result.get())

        print("\nsessions (the worker that holds a session's state serves its calls)", flush=True)
        stored = caller.execute_in_session(
            "demo-user", "remember", {"key": "colour", "value": "blue"}, app=app)
        _say("execute_in_session('demo-user', 'remember', {'key': 'colour', 'value': 'blue'})",
             f"stored in {stored['worker_id']}")
        recalled = caller.execute_in_session("demo-user", "recall", {"key": "colour"}, app=app)
        _say("execute_in_session('demo-user', 'recall', {'key': 'colour'})",
             f"{recalled['value']!r} from {recalled['worker_id']}")
        sessions.delete("demo-user", app=app)
        _say("sessions.delete('demo-user')", "the binding is gone")

        print("\nstreaming (partial results, in order, as the tool yields them)", flush=True)
        chunks = stream("stream_count", {"n": 3, "delay": 0.1}, app=app)
        for chunk in chunks:
            _say(f"chunk {chunk['_metadata']['seq']}", {"i": chunk["i"], "of": chunk["of"]})
        _say("final result", f"count {chunks.result['count']} from {chunks.result['worker_id']}")
        stats = caller.get_stats("demo", app=app)
        print("\nstats", flush=True)
        _say(", ".join(f"{k}={stats[k]}" for k in ("requests", "errors", "workers", "queued")))
        return 0
    except SnakepitError as exc:
        print(f"demo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        print("\nshutting down", flush=True)
        if node is not None and node.poll() is None:
            code = processes.terminate(node, NODE_STOP_SECONDS)
            _say("node stopped", f"exit code {code}")
        app_module.reset_default_app()
        if embedded is not None:
            embedded.stop()
            _say("embedded redis-server stopped")
