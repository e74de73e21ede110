"""The systems under test: a snakepit node, a raw Celery worker, one adapter runtime.

Each is started for real (subprocesses on a real Redis) and offered as a :class:`Target`: a
synchronous call, and for the Celery ones an asynchronous send whose result is ``.get()``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError

from snakepit_tasks import caller, state
from snakepit_tasks._proto import bridge_pb2 as pb
from snakepit_tasks.node.worker import AdapterWorker, worker_env

from . import raw_celery_app
from .procs import ROOT, BenchError, Child, Processes

ADAPTER = "adapters.showcase:ShowcaseAdapter"
CELERY_FLAGS = ("-l", "warning", "--without-gossip", "--without-mingle", "--without-heartbeat")


@dataclass
class Target:
    """Something to time: ``call()`` is one synchronous round trip; ``send()`` fires one
    call and returns an object whose ``.get(timeout=...)`` waits for its result."""

    key: str
    label: str
    call: Callable[[], Any]
    send: Callable[[], Any] | None = None
    worker_of: Callable[[Any], Any] = lambda result: None


def pools_config(pool: str, size: int) -> list[dict[str, Any]]:
    return [{"name": pool, "adapter": ADAPTER, "pool_size": size}]


def _child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), path) if p)
    env.update(extra)
    return env


def _check_pong(result: Any, what: str) -> None:
    if not (isinstance(result, dict) and result.get("status") == "pong"):
        raise BenchError(f"{what} answered {result!r}, not a pong")


# -- snakepit ----------------------------------------------------------------------------------
def start_node(procs: Processes, redis_url: str, pool: str, size: int, hostname: str) -> Child:
    """Start a snakepit node process serving ``pool`` with ``size`` workers (no waiting)."""
    cmd = [
        sys.executable, "-m", "celery", "-A", "snakepit_tasks.node.entry", "worker",
        "-n", hostname, "--snakepit-pool", pool, *CELERY_FLAGS,
    ]
    env = _child_env(
        SNAKEPIT_REDIS_URL=redis_url, SNAKEPIT_POOLS=json.dumps(pools_config(pool, size))
    )
    return procs.start(f"node-{hostname.split('@')[0]}", cmd, env)


def wait_workers_ready(
    redis_url: str, pool: str, size: int, child: Child, timeout: float = 60.0, poll: float = 0.01
) -> list[dict[str, Any]]:
    """Poll the node leases until ``size`` workers of ``pool`` are ready; return the nodes.

    Records the workers' pids on ``child`` so they are reaped with it.
    """
    r = state.redis_client(redis_url)
    deadline = time.monotonic() + timeout
    while True:
        nodes = state.live_nodes(r, pool)
        workers = [w for n in nodes for w in n["workers"]]
        child.owned_pids.update(int(w["pid"]) for w in workers if w.get("pid"))
        if sum(1 for w in workers if w["state"] == "ready") >= size:
            return nodes
        if child.process.poll() is not None:
            raise BenchError(
                f"{child.name} exited with code {child.process.returncode} before its workers "
                f"were ready:\n{child.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise BenchError(
                f"{child.name}: {size} workers not ready within {timeout:.0f}s:\n"
                f"{child.log_tail()}"
            )
        time.sleep(poll)


def snakepit_target(app: Celery, pool: str) -> Target:
    def call() -> Any:
        result = caller.execute("ping", pool=pool, app=app)
        _check_pong(result, "snakepit execute('ping')")
        return result

    def send() -> Any:
        return caller.execute_async("ping", pool=pool, app=app)

    return Target(
        "snakepit",
        'snakepit execute("ping")',
        call,
        send,
        worker_of=lambda result: result.get("pid"),
    )


# -- raw Celery -------------------------------------------------------------------------------
def start_raw_worker(
    procs: Processes, redis_url: str, queue: str, hostname: str, concurrency: int = 2
) -> Child:
    """Start ``celery -A bench.raw_celery_app worker -P threads -c N`` consuming ``queue``."""
    cmd = [
        sys.executable, "-m", "celery", "-A", "bench.raw_celery_app", "worker",
        "-P", "threads", "-c", str(concurrency), "-n", hostname, "-Q", queue, *CELERY_FLAGS,
    ]
    env = _child_env(BENCH_RAW_REDIS_URL=redis_url, BENCH_RAW_QUEUE=queue)
    return procs.start(f"raw-{hostname.split('@')[0]}", cmd, env)


def raw_celery_target(app: Celery) -> Target:
    task = app.tasks[raw_celery_app.PING]

    def call() -> Any:
        result = task.apply_async().get(timeout=30)
        _check_pong(result, "raw Celery ping")
        return result

    return Target(
        "raw_celery",
        "raw Celery task",
        call,
        task.apply_async,
        worker_of=lambda result: result.get("pid"),
    )


def wait_first_result(target: Target, child: Child, timeout: float = 60.0) -> Any:
    """One call through ``target``, waiting while its worker starts (or fails to)."""
    assert target.send is not None
    handle = target.send()
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = handle.get(timeout=0.25)
            break
        except CeleryTimeoutError:
            pass
        if child.process.poll() is not None:
            raise BenchError(
                f"{child.name} exited with code {child.process.returncode}:\n{child.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise BenchError(f"{child.name}: no answer within {timeout:.0f}s:\n{child.log_tail()}")
    _check_pong(result, child.name)
    return result


# -- one adapter runtime, called over gRPC directly ------------------------------------------------
class Runtime:
    """One adapter runtime process (what a node runs per worker), owned by this process."""

    def __init__(self) -> None:
        self.run_dir = tempfile.mkdtemp(prefix="snakepit-bench-rt-")
        env = worker_env(_child_env(), "process", {})
        self.worker = AdapterWorker(
            worker_id="bench-direct/0",
            index=0,
            adapter=ADAPTER,
            capacity=1,
            run_dir=self.run_dir,
            run_id="bench",
            instance="bench",
            env=env,
        )
        self.start_ms: float | None = None

    def start(self, timeout: float = 30.0) -> Runtime:
        started = time.perf_counter()
        self.worker.spawn()
        self.worker.wait_ready(timeout)
        self.start_ms = (time.perf_counter() - started) * 1000
        return self

    def stop(self) -> None:
        self.worker.stop(grace=2.0)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def targets(self) -> list[Target]:
        stub = self.worker.stub
        assert stub is not None
        ping_request = pb.PingRequest(message="ping")
        execute_request = pb.ExecuteRequest(
            call_id="bench", tool="ping", args=pb.Payload(data=b"{}", encoding="json")
        )

        def ping() -> Any:
            return stub.Ping(ping_request, timeout=10)

        def execute() -> Any:
            response = stub.Execute(execute_request, timeout=10)
            if not response.ok:
                raise BenchError(f"runtime Execute('ping') failed: {response.error}")
            return response

        return [
            Target("grpc_ping", "raw gRPC Ping (unary, unix socket)", ping),
            Target("grpc_execute", 'raw gRPC Execute("ping") to one runtime', execute),
        ]


def redis_target(redis_url: str) -> Target:
    client = state.redis_client(redis_url)
    return Target("redis_ping", "Redis PING (floor of any Redis hop)", client.ping)


def command_counter(redis_url: str) -> Callable[[], dict[str, int]]:
    """Redis's own count of each command served so far (``INFO commandstats``)."""
    client = state.redis_client(redis_url)

    def counts() -> dict[str, int]:
        stats = client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}

    return counts
