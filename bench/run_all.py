"""Run every benchmark: ``python -m bench.run_all [--quick]`` from the repository root.

Prints a table and a Markdown table, writes ``bench/results/latest.json``. Uses a private
Redis unless ``SNAKEPIT_REDIS_URL`` names one (then nothing is flushed; only keys carrying
this run's random tag are removed at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import logging
import os
import pstats
import secrets
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import redis

from snakepit_tasks import app as snakepit_app
from snakepit_tasks import caller, connections, sessions
from snakepit_tasks.embedded_redis import EmbeddedRedis

from . import measure, raw_celery_app, streams
from .machine import machine_info
from .procs import BenchError, Child, Processes, cleanup_on_signals, uninterrupted
from .report import derive_ratios, markdown_report, text_report, write_json
from .systems import (
    STREAM_ADAPTER,
    Runtime,
    Target,
    command_counter,
    pools_config,
    raw_celery_target,
    redis_target,
    session_target,
    snakepit_stream_source,
    snakepit_target,
    start_node,
    start_raw_worker,
    wait_first_result,
    wait_workers_ready,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Plan:
    calls: int = 2000
    rounds: int = 10
    warmup: int = 100
    throughput_calls: int = 2000
    throughput_rounds: int = 3
    startup_sizes: tuple[int, ...] = (2, 4, 8)
    startup_repeats: int = 3
    stream_chunks: int = 20_000
    stream_rounds: int = 3
    latency_streams: int = 10
    latency_chunks: int = 100
    latency_rounds: int = 2
    latency_delay_ms: float = 2.0


FULL = Plan()
QUICK = Plan(
    calls=500,
    rounds=5,
    warmup=50,
    throughput_rounds=1,
    startup_repeats=1,
    stream_chunks=5_000,
    stream_rounds=1,
    latency_streams=4,
    latency_rounds=1,
)


def _progress(started: float) -> measure.Progress:
    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    return say


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer calls and repeats (~30 s)")
    p.add_argument("--calls", type=int, help="sequential calls per system (>= 500 for a p99)")
    p.add_argument("--throughput-calls", type=int, help="calls fired per throughput round")
    p.add_argument("--throughput-rounds", type=int, help="throughput rounds per system")
    p.add_argument("--startup-sizes", help="comma-separated worker counts, e.g. 2,4,8")
    p.add_argument("--startup-repeats", type=int, help="start-ups per size")
    p.add_argument("--skip-startup", action="store_true", help="no start-up measurements")
    p.add_argument("--stream-chunks", type=int, help="chunks per throughput stream")
    p.add_argument("--latency-streams", type=int, help="timed streams per latency round")
    p.add_argument("--skip-streaming", action="store_true", help="no streaming measurements")
    p.add_argument(
        "--profile", action="store_true",
        help="also profile the caller over execute() calls (bench/results/caller.pstats)",
    )
    p.add_argument(
        "--output", type=Path, default=RESULTS_DIR / "latest.json", help="JSON results file"
    )
    return p.parse_args(argv)


def _plan(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    for name in (
        "calls", "throughput_calls", "throughput_rounds", "startup_repeats", "stream_chunks",
        "latency_streams",
    ):
        if getattr(args, name) is not None:
            changes[name] = max(1, getattr(args, name))
    if args.startup_sizes:
        changes["startup_sizes"] = tuple(int(x) for x in args.startup_sizes.split(",") if x)
    if args.skip_startup:
        changes["startup_sizes"] = ()
    if args.skip_streaming:
        changes["stream_chunks"] = changes["latency_streams"] = 0
    plan = replace(plan, **changes)
    return replace(plan, rounds=max(1, min(plan.rounds, plan.calls)))


def _forget_keys(redis_url: str, tag: str) -> None:
    """On a Redis we did not start, remove only what carries this run's random ``tag``."""
    r = redis.Redis.from_url(redis_url)
    try:
        for key in list(r.scan_iter(match=f"*{tag}*", count=1000)):
            r.delete(key)
        for set_key in ("snakepit:pools", "_kombu.binding.snakepit"):
            members = [m for m in r.smembers(set_key) if tag.encode() in m]
            if members:
                r.srem(set_key, *members)
    finally:
        r.close()


def _profile_caller(app: Any, pool: str, calls: int, say: measure.Progress) -> None:
    from snakepit_tasks import caller

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        caller.execute("ping", pool=pool, app=app)
    profiler.disable()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / "caller.pstats"
    profiler.dump_stats(str(path))
    say(f"caller profile of {calls} execute() calls written to {path}")
    stats = pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime")
    print(f"\nCaller-side profile, {calls} sequential execute('ping') calls (by own time):")
    stats.print_stats(15)


def _bind_elsewhere(app: Any, pool: str, session: Target) -> Any:
    """Make the session's first call (which binds it) while a ``sleep`` call holds the worker
    that idle sequential calls go to, so the session lands on the other one: then "all session
    calls ran on one worker" shows them following the binding, not the node's usual pick."""
    held = caller.execute_async("sleep", {"seconds": 0.5}, pool=pool, app=app)
    time.sleep(0.2)  # the node takes the call within a few ms
    session.call()
    result = held.get(timeout=30)
    return result.get("worker_id") if isinstance(result, dict) else None


def _streaming(
    plan: Plan,
    app: Any,
    redis_url: str,
    pool: str,
    stream_pool: str,
    stream_node: Child,
    stream_runtime: Runtime,
    tag: str,
    say: measure.Progress,
) -> dict[str, Any]:
    """Chunk throughput and per-chunk latency: snakepit against the runtime's own gRPC stream."""
    wait_workers_ready(redis_url, stream_pool, 1, stream_node)
    raw_grpc = stream_runtime.stream_source()
    out: dict[str, Any] = {}
    if plan.stream_chunks > 0:
        say(
            f"streaming throughput: stream_count of {plan.stream_chunks:,} chunks x "
            f"{plan.stream_rounds} round(s) per system"
        )
        sp_main = snakepit_stream_source(app, pool)
        # One short stream each first: thread start-up, connections, imports.
        streams.chunk_throughput([sp_main, raw_grpc], 100, 1, lambda message: None)
        out["throughput"] = streams.chunk_throughput(
            [sp_main, raw_grpc], plan.stream_chunks, plan.stream_rounds, say
        )
    if plan.latency_streams > 0:
        delay = plan.latency_delay_ms / 1000
        say(
            f"chunk latency: {plan.latency_streams} timed streams of {plan.latency_chunks} "
            f"chunks {plan.latency_delay_ms:g} ms apart x {plan.latency_rounds} round(s) per system"
        )
        sp_timed = snakepit_stream_source(app, stream_pool)
        streams.chunk_latency([sp_timed, raw_grpc], 20, 1, 1, delay, lambda message: None)
        out["latency"] = streams.chunk_latency(
            [sp_timed, raw_grpc],
            plan.latency_chunks,
            plan.latency_streams,
            plan.latency_rounds,
            delay,
            say,
        )
        out["latency"]["redis_stream"] = streams.redis_stream_hop(
            redis_url, f"bench:xhop{tag}", plan.latency_chunks * plan.latency_streams, delay
        )
    return out


def run(plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    say = _progress(started)
    procs = Processes()
    external = os.environ.get("SNAKEPIT_REDIS_URL")
    tag = "" if not external else "x" + secrets.token_hex(4)
    server: EmbeddedRedis | None = None
    runtimes: list[Runtime] = []
    apps: list[Any] = []
    results: dict[str, Any] = {"schema": 1, "quick": bool(args.quick)}
    try:
        if external:
            redis_url = external
            say(f"using Redis at {redis_url} (SNAKEPIT_REDIS_URL); run tag {tag}")
        else:
            server = EmbeddedRedis().start()
            redis_url = server.url
            say(f"private redis-server on port {server.port}")
        results["machine"] = machine_info(redis_url)
        results["settings"] = {**asdict(plan), "redis": "external" if external else "embedded"}

        pool, queue = f"bench{tag}", f"bench.raw{tag}"
        stream_pool = f"benchstream{tag}"
        streaming = plan.stream_chunks > 0 or plan.latency_streams > 0
        # The throughput round queues all its calls at once: more than the default
        # pool_max_queue_size (1,000) would let in.
        queue_cap = max(10_000, 2 * plan.throughput_calls)
        results["settings"]["pool_max_queue_size"] = queue_cap
        # A Redis stream keeps stream_max_len chunks (10,000 by default, trimmed as it grows):
        # a caller more than that far behind would miss chunks, so the nodes keep a whole stream.
        stream_max_len = max(10_000, 2 * plan.stream_chunks)
        node_settings = {"STREAM_MAX_LEN": str(stream_max_len)}
        results["settings"]["stream_max_len"] = stream_max_len
        pools = pools_config(pool, 2)
        if streaming:
            pools += pools_config(stream_pool, 1, STREAM_ADAPTER)
        app = snakepit_app.configure(
            redis_url=redis_url, pools=pools, pool_max_queue_size=queue_cap
        )
        raw_app = raw_celery_app.create_app(redis_url, queue)
        apps += [app, raw_app]

        say(
            "starting a snakepit node (2 workers), a raw Celery worker, one adapter runtime"
            + ("; for streaming a node (1 worker) and a runtime of bench.stream_adapter"
               if streaming else "")
        )
        node = start_node(
            procs, redis_url, pool, 2, f"bench{tag}@host", settings=node_settings
        )
        raw_worker = start_raw_worker(procs, redis_url, queue, f"raw{tag}@host")
        stream_node = None
        if streaming:
            stream_node = start_node(
                procs, redis_url, stream_pool, 1, f"benchstream{tag}@host", STREAM_ADAPTER,
                node_settings,
            )
        runtime = Runtime()
        runtimes.append(runtime)
        runtime.start()
        stream_runtime = None
        if streaming:
            stream_runtime = Runtime(STREAM_ADAPTER, "stream")
            runtimes.append(stream_runtime)
            stream_runtime.start()
        wait_workers_ready(redis_url, pool, 2, node)
        sp, raw = snakepit_target(app, pool), raw_celery_target(raw_app)
        wait_first_result(sp, node)
        wait_first_result(raw, raw_worker)

        # A session bound by its first call; the timed calls follow it to its worker.
        session_id = f"bench-session{tag}-{secrets.token_hex(4)}"
        session = session_target(app, pool, session_id)
        held_worker = _bind_elsewhere(app, pool, session)

        targets = [redis_target(redis_url), *runtime.targets(), raw, sp, session]
        say(f"round trips: {plan.calls} sequential calls per system")
        commands = command_counter(redis_url)
        results["round_trip"] = measure.round_trips(
            targets, plan.calls, plan.rounds, plan.warmup, commands
        )
        bound = sessions.get(session_id, app=app) or {}
        results["sessions"] = {
            "session_id": session_id,
            "calls": plan.calls + plan.warmup + 1,
            "affinity": app.snakepit_settings.affinity,
            "bound_worker": bound.get("worker"),
            "busy_worker_at_binding": held_worker,
            "workers_used": len(session.seen),
            "worker_ids": sorted(str(w) for w in session.seen),
            "plain_workers_used": len(sp.seen),
            "plain_worker_ids": sorted(str(w) for w in sp.seen),
            "pool_workers": len(caller.list_workers(pool, app=app)),
        }
        with contextlib.suppress(Exception):  # ends the session on its worker; keys gone too
            sessions.delete(session_id, app=app)
        say(
            f"throughput: {plan.throughput_calls} calls x {plan.throughput_rounds} round(s) "
            "per system"
        )
        results["throughput"] = measure.throughput(
            [raw, sp], plan.throughput_calls, plan.throughput_rounds, commands
        )
        if streaming:
            assert stream_node is not None and stream_runtime is not None
            results["streaming"] = _streaming(
                plan, app, redis_url, pool, stream_pool, stream_node, stream_runtime, tag, say
            )
        if args.profile:
            _profile_caller(app, pool, min(plan.calls, 1000), say)
        results["runtime_start_ms"] = (
            round(runtime.start_ms, 1) if runtime.start_ms is not None else None
        )
        with uninterrupted():
            while runtimes:
                runtimes.pop().stop()
            procs.stop(node)
            procs.stop(raw_worker)
            if stream_node is not None:
                procs.stop(stream_node)

        if plan.startup_sizes:
            say(f"start-up: nodes of {plan.startup_sizes} workers, {plan.startup_repeats}x each")
            results["startup"] = measure.startups(
                procs, app, redis_url, plan.startup_sizes, plan.startup_repeats, tag, say
            )
    except KeyboardInterrupt:
        raise
    except BaseException:
        procs.keep_logs = True
        for child in procs.children:
            code = child.process.poll()
            if code is not None:
                print(
                    f"bench: {child.name} had ended on its own (exit code {code}) before the "
                    "benchmark stopped it",
                    file=sys.stderr,
                )
        raise
    finally:
        with uninterrupted():
            # The caller's stream reader (a daemon thread) would log Redis going away (on
            # Ctrl-C the private redis-server, in the same process group, stops at once).
            logging.getLogger("snakepit_tasks.streaming").setLevel(logging.CRITICAL)
            while runtimes:
                try:
                    runtimes.pop().stop()
                except Exception as exc:  # keep stopping the rest
                    print(f"bench: could not stop a runtime: {exc!r}", file=sys.stderr)
            procs.stop_all()
            for a in apps:
                with contextlib.suppress(Exception):
                    a.close()
            snakepit_app.reset_default_app()
            connections.close_clients()
            if external and tag:
                with contextlib.suppress(redis.RedisError):
                    _forget_keys(external, tag)
            if server is not None:
                server.stop()
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["ratios"] = derive_ratios(results)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    plan = _plan(args)
    try:
        with cleanup_on_signals():
            results = run(plan, args)
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started has been stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench: failed: {exc}", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        print("bench: failed (see the traceback above)", file=sys.stderr)
        return 1
    write_json(results, args.output)
    print(text_report(results))
    print("Markdown for the README:\n")
    print(markdown_report(results))
    print(f"JSON: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
