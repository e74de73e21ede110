"""The systems under test: a snakepit node, a raw Celery worker, one adapter runtime.

Each is started for real (subprocesses on a real Redis) and offered as a :class:`Target`: a
synchronous call, and for the Celery ones an asynchronous send whose result is ``.get()``;
for streaming, as a :class:`StreamSource` (one streaming call, each chunk to a callback).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError

from snakepit_tasks import caller, connections, pool_state, serialization
from snakepit_tasks._proto import bridge_pb2 as pb
from snakepit_tasks.node.worker import AdapterWorker, worker_env
from snakepit_tasks.streaming import api as streaming

from . import raw_celery_app
from .procs import ROOT, BenchError, Child, Processes

ADAPTER = "adapters.showcase:ShowcaseAdapter"
# The showcase tools plus ``timed`` (chunks stamped with their yield time): bench/stream_adapter.py
STREAM_ADAPTER = "bench.stream_adapter:TimedStreamAdapter"
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
    # Worker ids that answered ``call()`` (filled by targets that record them).
    seen: set[Any] = field(default_factory=set)


@dataclass
class StreamSource:
    """Something that streams: ``run(tool, args, on_chunk)`` makes one streaming call, hands
    each chunk (a dict) to ``on_chunk`` as it arrives, and returns the final result."""

    key: str
    label: str
    run: Callable[[str, dict[str, Any], Callable[[dict[str, Any]], Any]], Any]


def pools_config(pool: str, size: int, adapter: str = ADAPTER) -> list[dict[str, Any]]:
    return [{"name": pool, "adapter": adapter, "pool_size": size}]


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
def start_node(
    procs: Processes,
    redis_url: str,
    pool: str,
    size: int,
    hostname: str,
    adapter: str = ADAPTER,
    settings: dict[str, str] | None = None,
    profile_to: str | None = None,
) -> Child:
    """Start a snakepit node process serving ``pool`` with ``size`` workers (no waiting).

    ``settings``: more ``SNAKEPIT_*`` variables for the node, e.g. ``{"STREAM_MAX_LEN": "40000"}``.
    ``profile_to``: run it under cProfile (every thread, ``bench.node_profile``), written there
    when it stops.
    """
    wrapper = ["-m", "bench.node_profile", profile_to] if profile_to else []
    cmd = [
        sys.executable, *wrapper, "-m", "celery", "-A", "snakepit_tasks.node.entry", "worker",
        "-n", hostname, "--snakepit-pool", pool, *CELERY_FLAGS,
    ]
    env = _child_env(
        SNAKEPIT_REDIS_URL=redis_url,
        SNAKEPIT_POOLS=json.dumps(pools_config(pool, size, adapter)),
        **{f"SNAKEPIT_{name}": value for name, value in (settings or {}).items()},
    )
    return procs.start(f"node-{hostname.split('@')[0]}", cmd, env)


def wait_workers_ready(
    redis_url: str, pool: str, size: int, child: Child, timeout: float = 60.0, poll: float = 0.01
) -> list[dict[str, Any]]:
    """Poll the node leases until ``size`` workers of ``pool`` are ready; return the nodes.

    Records the workers' pids on ``child`` so they are reaped with it.
    """
    r = connections.redis_client(redis_url)
    deadline = time.monotonic() + timeout
    while True:
        nodes = pool_state.live_nodes(r, pool)
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


def snakepit_target(
    app: Celery,
    pool: str,
    key: str = "snakepit",
    label: str = 'snakepit execute("ping"), fast lane',
) -> Target:
    """``execute("ping")``: on the fast lane or the Celery lane, as ``app``'s ``fast_lane`` says;
    ``send`` is ``execute_async`` (always Celery)."""
    seen: set[Any] = set()

    def call() -> Any:
        result = caller.execute("ping", pool=pool, app=app)
        _check_pong(result, f"{label}")
        seen.add(result.get("worker_id"))
        return result

    def send() -> Any:
        return caller.execute_async("ping", pool=pool, app=app)

    return Target(key, label, call, send, worker_of=lambda result: result.get("pid"), seen=seen)


def async_target(app: Celery, pool: str) -> Target:
    """``execute_async("ping").get()``: the Celery task protocol and result backend."""

    def call() -> Any:
        result = caller.execute_async("ping", pool=pool, app=app).get(timeout=30)
        _check_pong(result, "snakepit execute_async('ping').get()")
        return result

    return Target("snakepit_async", 'snakepit execute_async("ping").get()', call)


def session_target(
    app: Celery,
    pool: str,
    session_id: str,
    key: str = "snakepit_session",
    label: str = 'snakepit execute_in_session(sid, "ping")',
) -> Target:
    """``execute_in_session(session_id, "ping")``; bind the session before timing it."""
    seen: set[Any] = set()

    def call() -> Any:
        result = caller.execute_in_session(session_id, "ping", pool=pool, app=app)
        _check_pong(result, "snakepit execute_in_session('ping')")
        if result.get("session_id") != session_id:
            raise BenchError(f"a call of session {session_id!r} ran as {result!r}")
        seen.add(result.get("worker_id"))
        return result

    return Target(
        key,
        label,
        call,
        worker_of=lambda result: result.get("worker_id"),
        seen=seen,
    )


def snakepit_stream_source(app: Celery, pool: str) -> StreamSource:
    """``execute_stream`` on ``pool``: runtime → node → Redis stream → the caller's reader."""

    def run(tool: str, args: dict[str, Any], on_chunk: Callable[[dict[str, Any]], Any]) -> Any:
        return streaming.execute_stream(tool, args, on_chunk, pool=pool, app=app, timeout=120)

    return StreamSource("snakepit", f"snakepit execute_stream (pool {pool})", run)


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

    def __init__(self, adapter: str = ADAPTER, name: str = "direct") -> None:
        self.run_dir = tempfile.mkdtemp(prefix="snakepit-bench-rt-")
        env = worker_env(_child_env(), "process", {})
        self.worker = AdapterWorker(
            worker_id=f"bench-{name}/0",
            index=0,
            adapter=adapter,
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

        def calls() -> Any:
            response = self.worker.call_stream().call(execute_request, 10.0)
            if not response.ok:
                raise BenchError(f"runtime call socket 'ping' failed: {response.error}")
            return response

        return [
            Target("grpc_ping", "raw gRPC Ping (unary, unix socket)", ping),
            Target("grpc_execute", 'raw gRPC Execute("ping") to one runtime', execute),
            Target("call_socket", 'call socket "ping" to one runtime (what a node sends)', calls),
        ]

    def stream_source(self) -> StreamSource:
        """The runtime's ``ExecuteStream`` (a gRPC server stream) called directly, each chunk
        decoded to a dict as snakepit's caller does: the floor of any streamed chunk."""
        stub = self.worker.stub
        assert stub is not None
        decode = serialization.decode

        def run(tool: str, args: dict[str, Any], on_chunk: Callable[[dict[str, Any]], Any]) -> Any:
            request = pb.ExecuteRequest(
                call_id="bench-stream",
                tool=tool,
                args=pb.Payload(data=serialization.encode_args(args), encoding="json"),
            )
            for message in stub.ExecuteStream(request, timeout=120):
                if message.is_final:
                    if message.HasField("error") and message.error.kind:
                        raise BenchError(f"raw ExecuteStream({tool!r}) failed: {message.error}")
                    return decode(message.result.data, message.result.encoding)
                value = decode(message.data.data, message.data.encoding)
                chunk = dict(value) if isinstance(value, dict) else {"data": value}
                chunk["_metadata"] = {"seq": message.seq}
                on_chunk(chunk)
            raise BenchError(f"raw ExecuteStream({tool!r}) ended without a final message")

        return StreamSource("raw_grpc", "raw gRPC ExecuteStream to one runtime", run)


def redis_target(redis_url: str) -> Target:
    client = connections.redis_client(redis_url)
    return Target("redis_ping", "Redis PING (floor of any Redis hop)", client.ping)


def command_counter(redis_url: str) -> Callable[[], dict[str, int]]:
    """Redis's own count of each command served so far (``INFO commandstats``)."""
    client = connections.redis_client(redis_url)

    def counts() -> dict[str, int]:
        stats = client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}

    return counts
