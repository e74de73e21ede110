"""The tool bridge's round trip: ``python -m bench.host_tools [--calls N]``, from the repo root.

A host-tool call timed from inside an adapter (``session_context.call_host_tool`` → the node's
HostTools socket → Redis → this process's listener → back), next to a plain ``execute("ping")``
and ``execute_in_session(sid, "ping")`` timed in this process, in one run on one Redis, in
interleaved rounds. Also a global host tool (``host_tools`` of the pool: it runs in the node).
Prints a table; writes ``bench/results/host_tools.json``. A private Redis unless
``SNAKEPIT_REDIS_URL`` names one (then only keys carrying this run's random tag are removed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import redis

import snakepit_tasks as sp
from snakepit_tasks import app as snakepit_app
from snakepit_tasks import caller, connections
from snakepit_tasks.embedded_redis import EmbeddedRedis

from .machine import machine_info
from .procs import ROOT, BenchError, Child, Processes, cleanup_on_signals, uninterrupted
from .stats import ratio, summarize
from .systems import CELERY_FLAGS, command_counter, wait_workers_ready

ADAPTER = "bench.host_adapter:HostBenchAdapter"
GLOBAL_TOOL = "bench.host_adapter:echo"
RESULTS = Path(__file__).resolve().parent / "results" / "host_tools.json"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.host_tools",
                                description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=2000, help="timed calls per measure")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    p.add_argument("--warmup", type=int, default=100, help="untimed calls per measure first")
    p.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    return p.parse_args(argv)


def _start_node(procs: Processes, redis_url: str, pool: str, hostname: str) -> Child:
    table = {"name": pool, "adapter": ADAPTER, "pool_size": 2, "host_tools": [GLOBAL_TOOL]}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(SNAKEPIT_REDIS_URL=redis_url, SNAKEPIT_POOLS=json.dumps([table]))
    cmd = [sys.executable, "-m", "celery", "-A", "snakepit_tasks.node.entry", "worker",
           "-n", hostname, "--snakepit-pool", pool, *CELERY_FLAGS]
    return procs.start(f"node-{pool}", cmd, env)


def _measure(app: Any, pool: str, sid: str, calls: int, rounds: int, warmup: int,
             commands: Any) -> dict[str, Any]:
    """Sequential samples of each measure, in interleaved rounds; Redis commands per call."""
    perf = time.perf_counter

    def plain() -> None:
        caller.execute("ping", pool=pool, app=app)

    def session() -> None:
        caller.execute_in_session(sid, "ping", pool=pool, app=app)

    def timed_here(fn: Any, n: int) -> list[float]:
        out = []
        for _ in range(n):
            started = perf()
            fn()
            out.append(perf() - started)
        return out

    def in_adapter(name: str, n: int) -> list[float]:
        times = caller.execute_in_session(sid, "time_host", {"name": name, "n": n}, pool=pool,
                                          app=app, timeout=600)
        return [float(t) for t in times]

    measures = {
        "host_tool": lambda n: in_adapter("echo_host", n),
        "global_host_tool": lambda n: in_adapter("echo", n),
        "execute": lambda n: timed_here(plain, n),
        "execute_in_session": lambda n: timed_here(session, n),
    }
    for run in measures.values():
        run(warmup)
    samples: dict[str, list[float]] = {k: [] for k in measures}
    counted: dict[str, int] = dict.fromkeys(measures, 0)
    per_round = max(1, calls // rounds)
    keys = list(measures)
    for i in range(rounds):
        n = per_round if i < rounds - 1 else calls - per_round * (rounds - 1)
        for key in keys[i % len(keys):] + keys[: i % len(keys)]:
            before = sum(commands().values())
            samples[key] += measures[key](n)
            # The host-tool batches include one execute_in_session("time_host") call each.
            counted[key] += sum(commands().values()) - before
    return {
        k: {**summarize(v), "redis_commands_per_call": round(counted[k] / len(v), 1)}
        for k, v in samples.items()
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    procs = Processes()
    external = os.environ.get("SNAKEPIT_REDIS_URL")
    tag = "x" + secrets.token_hex(4)
    server: EmbeddedRedis | None = None
    app: Any = None
    results: dict[str, Any] = {"schema": 1}
    try:
        if external:
            redis_url = external
        else:
            server = EmbeddedRedis().start()
            redis_url = server.url
        results["machine"] = machine_info(redis_url)
        pool = f"hostbench{tag}"
        table = {"name": pool, "adapter": ADAPTER, "pool_size": 2, "host_tools": [GLOBAL_TOOL]}
        app = snakepit_app.configure(redis_url=redis_url, pools=[table])
        node = _start_node(procs, redis_url, pool, f"{pool}@host")
        wait_workers_ready(redis_url, pool, 2, node)
        sid = f"hostbench-session{tag}"
        sp.register_host_tool(sid, "echo_host", lambda **kw: kw, app=app)
        print(f"bench.host_tools: {args.calls} calls per measure, {args.rounds} rounds",
              file=sys.stderr, flush=True)
        results["round_trip"] = _measure(app, pool, sid, args.calls, args.rounds, args.warmup,
                                         command_counter(redis_url))
        results["settings"] = {"calls": args.calls, "rounds": args.rounds,
                               "warmup": args.warmup, "pool_size": 2}
        with contextlib.suppress(Exception):
            sp.sessions.delete(sid, app=app)
    except BaseException:
        procs.keep_logs = True
        raise
    finally:
        with uninterrupted():
            procs.stop_all()
            sp_listener_stop()
            if app is not None:
                with contextlib.suppress(Exception):
                    app.close()
            snakepit_app.reset_default_app()
            connections.close_clients()
            if external:
                _forget_keys(external, tag)
            if server is not None:
                server.stop()
    rt = results["round_trip"]
    results["ratios"] = {
        "host_tool_vs_execute_median": ratio(rt["host_tool"]["median_ms"],
                                             rt["execute"]["median_ms"]),
        "host_tool_vs_execute_p99": ratio(rt["host_tool"]["p99_ms"], rt["execute"]["p99_ms"]),
        "global_vs_execute_median": ratio(rt["global_host_tool"]["median_ms"],
                                          rt["execute"]["median_ms"]),
    }
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    return results


def _forget_keys(redis_url: str, tag: str) -> None:
    """On a Redis we did not start, remove what carries this run's random ``tag``."""
    r = redis.Redis.from_url(redis_url)
    with contextlib.suppress(redis.RedisError):
        for key in list(r.scan_iter(match=f"*{tag}*", count=1000)):
            r.delete(key)
    r.close()


def sp_listener_stop() -> None:
    """Stop this process's host-tool listener before its Redis goes away."""
    from snakepit_tasks.host_tools import listener

    listener.stop_all()


LABELS = {
    "host_tool": "host tool, from inside the adapter (registrant: this process)",
    "global_host_tool": "global host tool (pool host_tools, runs in the node)",
    "execute": 'execute("ping"), from this process',
    "execute_in_session": 'execute_in_session(sid, "ping"), from this process',
}


def report(results: dict[str, Any]) -> str:
    rt = results["round_trip"]
    lines = [f"{'round trip':64} {'median':>9} {'p90':>9} {'p99':>9} {'redis/call':>10}"]
    for key, label in LABELS.items():
        r = rt[key]
        lines.append(f"{label:64} {r['median_ms']:8.3f}ms {r['p90_ms']:8.3f}ms "
                     f"{r['p99_ms']:8.3f}ms {r['redis_commands_per_call']:10.1f}")
    q = results["ratios"]
    lines.append(f"host tool / execute: {q['host_tool_vs_execute_median']}x median, "
                 f"{q['host_tool_vs_execute_p99']}x p99 (target <= 1.0x); global / execute: "
                 f"{q['global_vs_execute_median']}x median")
    load = results["machine"].get("loadavg_end")
    if load:
        lines.append(f"load average at the end: {', '.join(f'{x:.2f}' for x in load)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        with cleanup_on_signals():
            results = run(args)
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started has been stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench: failed: {exc}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    print(f"JSON: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
