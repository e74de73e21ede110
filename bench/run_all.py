"""Run every benchmark: ``python -m bench.run_all [--quick]`` from the repository root.

Prints a table and a Markdown table, writes ``bench/results/latest.json``. Uses a private
Redis unless ``SNAKEPIT_REDIS_URL`` names one (then nothing is flushed; only keys carrying
this run's random tag are removed at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import logging
import os
import pstats
import secrets
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import redis

from snakepit_tasks import app as snakepit_app
from snakepit_tasks import caller, connections, sessions
from snakepit_tasks.embedded_redis import EmbeddedRedis

from . import (
    concurrent_callers,
    cpu,
    measure,
    profile_view,
    raw_celery_app,
    ray_actor,
    scale,
    streams,
    table,
)
from .footprint import node_footprint, process_rss_mib
from .grpc_mux import MuxRuntime
from .machine import machine_info
from .procs import BenchError, Child, Processes, cleanup_on_signals, uninterrupted
from .report import derive_ratios, text_report, write_json
from .systems import (
    STREAM_ADAPTER,
    Runtime,
    Target,
    async_target,
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
# What the per-call profile views show: our code, the gRPC call, Redis commands, sockets.
PROFILE_FUNCTIONS = (
    r"snakepit_tasks/|grpc/_channel\.py.*\((_blocking|__call__)\)|redis/client\.py.*"
    r"\((execute_command|execute|_execute_command)\)|socket' objects|_thread.lock|orjson|json"
    r"|celery/result\.py.*\(get\)|celery/backends/.*\((wait_for_pending|_wait_for_pending)\)"
)


@dataclass(frozen=True)
class Plan:
    calls: int = 2000
    rounds: int = 10
    warmup: int = 100
    throughput_calls: int = 2000
    throughput_rounds: int = 3
    startup_sizes: tuple[int, ...] = (2, 8, 32)
    startup_repeats: int = 2
    scale_workers: int = 100
    concurrent_callers: int = 8
    concurrent_calls: int = 2000
    concurrent_rounds: int = 3
    ray: bool = True
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
    scale_workers=0,
    concurrent_calls=400,
    concurrent_rounds=1,
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
    p.add_argument("--quick", action="store_true",
                   help="fewer calls and repeats, no 100 workers (~1 min)")
    p.add_argument("--calls", type=int, help="sequential calls per system (>= 500 for a p99)")
    p.add_argument("--throughput-calls", type=int, help="calls fired per throughput round")
    p.add_argument("--throughput-rounds", type=int, help="throughput rounds per system")
    p.add_argument("--startup-sizes", help="comma-separated worker counts, e.g. 2,4,8")
    p.add_argument("--startup-repeats", type=int, help="start-ups per size")
    p.add_argument("--skip-startup", action="store_true", help="no start-up measurements")
    p.add_argument("--scale-workers", type=int,
                   help="workers of the start-and-stop orphan check (100; 0 skips it)")
    p.add_argument("--concurrent-callers", type=int, help="threads of the concurrent rows (8)")
    p.add_argument("--concurrent-calls", type=int, help="calls per concurrent round (0 skips them)")
    p.add_argument("--skip-ray", action="store_true", help="no Ray actor row")
    p.add_argument("--stream-chunks", type=int, help="chunks per throughput stream")
    p.add_argument("--latency-streams", type=int, help="timed streams per latency round")
    p.add_argument("--skip-streaming", action="store_true", help="no streaming measurements")
    p.add_argument(
        "--profile", action="store_true",
        help="also profile the caller and a node (every thread) over execute() calls "
        "(bench/results/caller.pstats, node.pstats)",
    )
    p.add_argument(
        "--output", type=Path, default=RESULTS_DIR / "latest.json", help="JSON results file"
    )
    p.add_argument(
        "--print-table", type=Path, metavar="JSON",
        help="only print the Markdown table of a saved results file (e.g. the last run's)",
    )
    return p.parse_args(argv)


def _plan(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    for name in (
        "calls", "throughput_calls", "throughput_rounds", "startup_repeats", "stream_chunks",
        "latency_streams", "concurrent_callers",
    ):
        if getattr(args, name) is not None:
            changes[name] = max(1, getattr(args, name))
    if args.startup_sizes:
        changes["startup_sizes"] = tuple(int(x) for x in args.startup_sizes.split(",") if x)
    if args.concurrent_calls is not None:
        changes["concurrent_calls"] = max(0, args.concurrent_calls)  # 0: no concurrent rows
    if args.scale_workers is not None:
        changes["scale_workers"] = max(0, args.scale_workers)
    if args.skip_startup:
        changes["startup_sizes"] = ()
        changes["scale_workers"] = 0
    if args.skip_ray:
        changes["ray"] = False
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


@dataclass(frozen=True)
class Profiled:
    """One kind of call the profile phase times: ``call(app, pool)`` makes one; ``units`` is
    what the per-call view divides by (calls, or chunks for a stream)."""

    label: str
    call: Callable[[Any, str], Any]
    units: int = 1
    share: float = 1.0  # the fraction of --calls this kind makes


def _stream_chunks(app: Any, pool: str, n: int = 2000) -> Any:
    from snakepit_tasks.streaming import api as streaming

    return streaming.execute_stream("stream_count", {"n": n}, lambda chunk: None, pool=pool,
                                    app=app, timeout=120)


PROFILED_CALLS: dict[str, Profiled] = {
    "fast_lane": Profiled(
        "execute('ping'), fast lane",
        lambda app, pool: caller.execute("ping", pool=pool, app=app, timeout=60),
    ),
    "celery_async": Profiled(
        "execute_async('ping').get(), Celery",
        lambda app, pool: caller.execute_async("ping", pool=pool, app=app).get(timeout=60),
    ),
    "stream": Profiled("execute_stream('stream_count', n=2000), per chunk", _stream_chunks,
                       units=2000, share=0.01),
}


def _profile(
    procs: Processes, app: Any, redis_url: str, tag: str, calls: int, say: measure.Progress
) -> dict[str, Any]:
    """For each of :data:`PROFILED_CALLS`: cProfile of the caller over ``calls`` sequential
    calls, and of a fresh node serving them (every thread: ``bench.node_profile``); each read
    per call, printed, and saved under bench/results/."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    for kind, what in PROFILED_CALLS.items():
        label, call = what.label, what.call
        n = max(2, int(calls * what.share))
        caller_path = RESULTS_DIR / f"caller-{kind}.pstats"
        node_path = RESULTS_DIR / f"node-{kind}.pstats"
        node_path.unlink(missing_ok=True)
        pool = f"benchprof{kind.replace('_', '')}{tag}"
        node = start_node(procs, redis_url, pool, 2, f"{pool}@host", profile_to=str(node_path))
        warmup = max(1, n // 6)
        try:
            wait_workers_ready(redis_url, pool, 2, node)
            for _ in range(warmup):
                call(app, pool)
            say(f"profiling {n} sequential {label} calls: caller and node")
            profiler = cProfile.Profile()
            started = time.perf_counter()
            profiler.enable()
            for _ in range(n):
                call(app, pool)
            profiler.disable()
            elapsed = time.perf_counter() - started
        finally:
            procs.stop(node, timeout=60)  # the node writes its profile as it exits
        profiler.dump_stats(str(caller_path))
        units = n * what.units
        per_call_us = elapsed / units * 1e6 * 1.05
        found: dict[str, Any] = {"calls": n, "units": units,
                                 "ms_per_unit_profiled": round(elapsed / units * 1000, 4)}
        found["caller"] = profile_view.per_call(
            pstats.Stats(profiler), units, PROFILE_FUNCTIONS, per_call_us
        )
        print(f"\nWhere the time of {label} goes, caller side: {n} sequential calls, "
              f"{elapsed / units * 1000:.3f} ms each under the profiler (times per "
              f"{'chunk' if what.units > 1 else 'call'}):")
        print(profile_view.text(found["caller"]))
        if node_path.exists():
            # The node served the warm-up calls too; its start and stop ran once (not per call).
            found["node"] = profile_view.per_call(
                pstats.Stats(str(node_path)), (n + warmup) * what.units, PROFILE_FUNCTIONS,
                per_call_us,
            )
            print(f"\n{label}, node side, every thread, wall-clock (waits inside a call "
                  "included; idle waits between calls left out), per call:")
            print(profile_view.text(found["node"]))
        else:
            say("the profiled node wrote no profile (see its log)")
        print(f"\nFull profiles: {caller_path}, {node_path} (python -m pstats FILE)\n")
        out[kind] = found
    return out


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
    node: Child,
    redis_pid: int | None,
) -> dict[str, Any]:
    """Chunk throughput and per-chunk latency: snakepit against the runtime's own gRPC stream.

    The throughput streams also count CPU µs per chunk in each process (``bench.cpu``)."""
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
        redis_pids = [redis_pid] if redis_pid else []
        workers = [
            int(w["pid"]) for n in wait_workers_ready(redis_url, pool, 2, node)
            for w in n["workers"] if w.get("pid")
        ]
        runtime_pid = stream_runtime.worker.pid
        sp_cpu: list[dict[str, float]] = []
        raw_cpu: list[dict[str, float]] = []
        chunks_of: Callable[[Any], int] = lambda args: int(args.get("n", 1))  # noqa: E731
        metered_sources = [
            cpu.metered(sp_main, lambda: {"node": [node.process.pid], "runtimes": workers,
                                          "redis": redis_pids}, chunks_of, sp_cpu),
            cpu.metered(raw_grpc, lambda: {"runtimes": [runtime_pid] if runtime_pid else [],
                                           "redis": redis_pids}, chunks_of, raw_cpu),
        ]
        out["throughput"] = streams.chunk_throughput(
            metered_sources, plan.stream_chunks, plan.stream_rounds, say
        )
        out["cpu_us_per_chunk"] = {
            "snakepit": cpu.median_per_role(sp_cpu), "raw_grpc": cpu.median_per_role(raw_cpu)
        }
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
    ray: ray_actor.RayActor | None = None
    mux: MuxRuntime | None = None
    results: dict[str, Any] = {"schema": 2, "quick": bool(args.quick)}
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
        # The throughput round's last calls wait in the queue longer than the default
        # pool_queue_timeout (5 s) at a few hundred calls/s: the nodes and the caller let them.
        queue_timeout_ms = 300_000
        node_settings = {"STREAM_MAX_LEN": str(stream_max_len),
                         "POOL_QUEUE_TIMEOUT": str(queue_timeout_ms)}
        results["settings"]["stream_max_len"] = stream_max_len
        results["settings"]["pool_queue_timeout"] = queue_timeout_ms
        pools = pools_config(pool, 2)
        if streaming:
            pools += pools_config(stream_pool, 1, STREAM_ADAPTER)
        app = snakepit_app.configure(
            redis_url=redis_url, pools=pools, pool_max_queue_size=queue_cap,
            pool_queue_timeout=queue_timeout_ms,
        )
        # The same caller settings with fast_lane off: execute() over Celery's task protocol.
        celery_lane = snakepit_app.create_app(app.snakepit_settings.replace(fast_lane=False))
        app.set_current()
        raw_app = raw_celery_app.create_app(redis_url, queue)
        apps += [app, celery_lane, raw_app]

        say(
            "starting a snakepit node (2 workers), a raw Celery worker, one adapter runtime, "
            "the gRPC mux server"
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
        # Ray starts while the nodes boot (its own processes; shut down before start-up).
        ray = None
        if plan.ray:
            if ray_actor.available():
                say("starting Ray locally (1 CPU, no dashboard) and one actor")
                ray = ray_actor.start()
                results["ray"] = {"status": "measured", "actor_pid": ray and ray.pid}
            else:
                results["ray"] = {"status": "ray not installed"}
                say("ray not installed (pip install -e '.[bench]'): no Ray row")
        else:
            results["ray"] = {"status": "skipped (--skip-ray)"}
        runtime = Runtime()
        runtimes.append(runtime)
        runtime.start()
        stream_runtime = None
        if streaming:
            stream_runtime = Runtime(STREAM_ADAPTER, "stream")
            runtimes.append(stream_runtime)
            stream_runtime.start()
        mux = MuxRuntime(procs).start()
        wait_workers_ready(redis_url, pool, 2, node)
        sp, raw = snakepit_target(app, pool), raw_celery_target(raw_app)
        sp_celery = snakepit_target(
            celery_lane, pool, "snakepit_celery", 'snakepit execute("ping"), Celery lane'
        )
        wait_first_result(sp, node)
        wait_first_result(raw, raw_worker)

        # A session bound by its first call; the timed calls follow it to its worker.
        session_id = f"bench-session{tag}-{secrets.token_hex(4)}"
        session = session_target(app, pool, session_id)
        held_worker = _bind_elsewhere(app, pool, session)

        targets = [
            redis_target(redis_url), *runtime.targets(), *mux.targets(), raw, sp, sp_celery,
            session, async_target(app, pool),
        ]
        if ray is not None:
            targets.append(ray.target())
        say(f"round trips: {plan.calls} sequential calls per system ({len(targets)} systems)")
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
        mux.stop()
        if ray is not None:
            results["footprint_ray_actor_mib"] = process_rss_mib(ray.pid)
            ray.stop()
            ray = None
        nodes_now = wait_workers_ready(redis_url, pool, 2, node)
        results["footprint"] = {
            "node": node_footprint(
                node.process.pid,
                [int(w["pid"]) for n in nodes_now for w in n["workers"] if w.get("pid")],
            ),
            "raw_celery_worker_mib": process_rss_mib(raw_worker.process.pid),
            "ray_actor_mib": results.pop("footprint_ray_actor_mib", None),
        }
        say(
            f"throughput: {plan.throughput_calls} calls x {plan.throughput_rounds} round(s) "
            "per system"
        )
        sp_async = replace(sp, label='snakepit execute_async("ping"), Celery path')
        results["throughput"] = measure.throughput(
            [raw, sp_async], plan.throughput_calls, plan.throughput_rounds, commands
        )
        if plan.concurrent_calls > 0:
            say(
                f"throughput: {plan.concurrent_callers} concurrent callers, "
                f"{plan.concurrent_calls} calls x {plan.concurrent_rounds} round(s) per system"
            )
            redis_pids = [server.process.pid] if server is not None and server.process else []
            node_pids = {"node": [node.process.pid], "runtimes": [
                int(w["pid"]) for n in nodes_now for w in n["workers"] if w.get("pid")
            ], "redis": redis_pids}
            results["concurrent"] = concurrent_callers.throughput(
                [raw, sp, sp_celery], plan.concurrent_callers, plan.concurrent_calls,
                plan.concurrent_rounds, commands,
                {"raw_celery": lambda: {"worker": [raw_worker.process.pid], "redis": redis_pids},
                 "snakepit": lambda: node_pids, "snakepit_celery": lambda: node_pids},
            )
        if streaming:
            assert stream_node is not None and stream_runtime is not None
            results["streaming"] = _streaming(
                plan, app, redis_url, pool, stream_pool, stream_node, stream_runtime, tag, say,
                node, server.process.pid if server is not None and server.process else None,
            )
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
        if args.profile:
            results["profile"] = _profile(
                procs, app, redis_url, tag, min(plan.calls, 1000), say
            )

        if plan.startup_sizes:
            say(f"start-up: nodes of {plan.startup_sizes} workers, {plan.startup_repeats}x each")
            results["startup"] = measure.startups(
                procs, app, redis_url, plan.startup_sizes, plan.startup_repeats, tag, say
            )
        if plan.scale_workers > 0:
            say(f"start-up and stop of a node of {plan.scale_workers} workers, orphans counted")
            results["scale"] = scale.start_stop(
                procs, redis_url, plan.scale_workers, f"bscale{tag}"
            )
            say(
                f"{plan.scale_workers} workers: ready {results['scale']['ready_ms']:.0f} ms, "
                f"stopped {results['scale']['stop_ms']:.0f} ms, "
                f"{results['scale']['orphans']} orphan(s)"
            )
        else:
            results["scale_skipped"] = "skipped (--quick)" if args.quick else "skipped"
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
            if ray is not None:
                try:
                    ray.stop()
                except Exception as exc:  # keep stopping the rest
                    print(f"bench: could not shut Ray down: {exc!r}", file=sys.stderr)
            if mux is not None:
                with contextlib.suppress(Exception):
                    mux.stop()
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
    if args.print_table:
        print(table.markdown(json.loads(args.print_table.read_text())), end="")
        return 0
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
    tally = table.counts(results)
    print("The table, measured side by side in this run (Markdown, ready for README.md):\n")
    print(table.markdown(results))
    print(f"targets: {tally['met']} met, {tally['missed']} missed, of {tally['targets']} "
          "(any others not measured)")
    if tally["missed"]:
        print("where the time goes for those missed: bench/README.md, 'Where the time goes'; "
              "profiles of caller and node: --profile")
    print(f"JSON: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
