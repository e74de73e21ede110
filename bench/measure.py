"""The measurements: sequential round trips, fire-then-gather throughput, start-up time."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery

from snakepit_tasks import caller

from . import raw_celery_app
from .procs import BenchError, Processes
from .stats import summarize
from .systems import (
    Target,
    raw_celery_target,
    start_node,
    start_raw_worker,
    wait_first_result,
    wait_workers_ready,
)

Progress = Callable[[str], None]


CommandCounter = Callable[[], dict[str, int]]


def _delta(after: dict[str, int], before: dict[str, int], into: dict[str, int]) -> None:
    for name, n in after.items():
        if name != "info" and n != before.get(name, 0):
            into[name] = into.get(name, 0) + n - before.get(name, 0)


def round_trips(
    targets: Sequence[Target],
    calls: int,
    rounds: int,
    warmup: int,
    commands: CommandCounter | None = None,
) -> dict[str, dict[str, Any]]:
    """``calls`` sequential calls per target, in ``rounds`` interleaved blocks.

    Interleaving (with the order rotated each round) spreads slow spells of a shared machine
    over every target instead of charging them to whichever ran at the time. ``commands``
    (Redis's per-command call counts) gives each target's Redis commands per call: unlike
    times, a count that a busy machine does not blur.
    """
    for t in targets:
        for _ in range(warmup):
            t.call()
    samples: dict[str, list[float]] = {t.key: [] for t in targets}
    counts: dict[str, dict[str, int]] = {t.key: {} for t in targets}
    per_round = max(1, calls // rounds)
    perf = time.perf_counter
    for i in range(rounds):
        order = list(targets[i % len(targets):]) + list(targets[: i % len(targets)])
        for t in order:
            out = samples[t.key]
            call = t.call
            n = per_round if i < rounds - 1 else calls - per_round * (rounds - 1)
            before = commands() if commands else {}
            for _ in range(n):
                started = perf()
                call()
                out.append(perf() - started)
            if commands:
                _delta(commands(), before, counts[t.key])
    results: dict[str, dict[str, Any]] = {}
    for t in targets:
        results[t.key] = {"label": t.label, **summarize(samples[t.key])}
        if commands:
            per_call = {k: round(v / calls, 2) for k, v in counts[t.key].items()}
            results[t.key]["redis_commands_per_call"] = round(sum(per_call.values()), 1)
            results[t.key]["redis_commands"] = dict(
                sorted(per_call.items(), key=lambda kv: (-kv[1], kv[0]))
            )
    return results


def _fire_and_gather(
    target: Target, calls: int, timeout: float, commands: CommandCounter | None
) -> dict[str, Any]:
    assert target.send is not None
    send = target.send
    before = commands() if commands else {}
    started = time.perf_counter()
    handles = [send() for _ in range(calls)]
    sent = time.perf_counter()
    results = [h.get(timeout=timeout) for h in handles]
    done = time.perf_counter()
    counts: dict[str, int] = {}
    if commands:
        _delta(commands(), before, counts)
    bad = [r for r in results if not (isinstance(r, dict) and r.get("status") == "pong")]
    if bad:
        raise BenchError(f"{target.label}: {len(bad)} of {calls} calls did not pong: {bad[0]!r}")
    return {
        "calls": calls,
        "send_s": round(sent - started, 4),
        "total_s": round(done - started, 4),
        "calls_per_s": round(calls / (done - started), 1),
        "send_calls_per_s": round(calls / (sent - started), 1),
        "processes_used": len({target.worker_of(r) for r in results}),
        "redis_commands_per_call": round(sum(counts.values()) / calls, 1) if commands else None,
    }


def throughput(
    targets: Sequence[Target],
    calls: int,
    rounds: int,
    commands: CommandCounter | None = None,
    timeout: float = 300.0,
) -> dict[str, dict[str, Any]]:
    """Fire ``calls`` asynchronous calls, then ``.get()`` them all; ``rounds`` times each,
    alternating targets. The figure is the median round."""
    runs: dict[str, list[dict[str, Any]]] = {t.key: [] for t in targets}
    for i in range(rounds):
        order = targets if i % 2 == 0 else list(reversed(targets))
        for t in order:
            runs[t.key].append(_fire_and_gather(t, calls, timeout, commands))
    out: dict[str, dict[str, Any]] = {}
    for t in targets:
        rs = runs[t.key]
        out[t.key] = {
            "label": t.label,
            "calls": calls,
            "rounds": rounds,
            "calls_per_s": round(statistics.median(r["calls_per_s"] for r in rs), 1),
            "send_calls_per_s": round(statistics.median(r["send_calls_per_s"] for r in rs), 1),
            "best_calls_per_s": max(r["calls_per_s"] for r in rs),
            "processes_used": max(r["processes_used"] for r in rs),
            "redis_commands_per_call": rs[-1]["redis_commands_per_call"],
            "runs": rs,
        }
    return out


def node_startup(
    procs: Processes,
    app: Celery,
    redis_url: str,
    size: int,
    name: str,
    settings: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Start a node of ``size`` workers; time it to all-ready and to a first answered call.

    ``settings``: more ``SNAKEPIT_*`` variables for the node (see :func:`start_node`).

    ``boot_ms`` is process start to the node step creating its workers (Python, Celery and
    settings); ``workers_ms`` is from there to every worker ready (from the node's lease).
    """
    wall0 = time.time()
    t0 = time.perf_counter()
    child = start_node(procs, redis_url, name, size, f"{name}@host", settings=settings)
    try:
        nodes = wait_workers_ready(redis_url, name, size, child)
        t_ready = time.perf_counter()
        result = caller.execute("ping", pool=name, app=app, timeout=60)
        t_first = time.perf_counter()
        if not (isinstance(result, dict) and result.get("status") == "pong"):
            raise BenchError(f"first call to {name} answered {result!r}")
        node_started = _float(nodes[0].get("started_at"))
        spawns = [_float(w.get("started_at")) for w in nodes[0]["workers"]]
        first_spawn = min((t for t in spawns if t is not None), default=None)
    finally:
        t_stop = time.perf_counter()
        procs.stop(child)
        stopped = time.perf_counter()
    boot_ms = None if node_started is None else round((node_started - wall0) * 1000, 1)
    ready_ms = round((t_ready - t0) * 1000, 1)
    return {
        "workers": size,
        "ready_ms": ready_ms,
        "first_call_ms": round((t_first - t0) * 1000, 1),
        "boot_ms": boot_ms,
        "first_spawn_ms": None if first_spawn is None else round((first_spawn - wall0) * 1000, 1),
        "workers_ms": None if boot_ms is None else round(ready_ms - boot_ms, 1),
        "stop_ms": round((stopped - t_stop) * 1000, 1),
    }


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 1) if known else None


def raw_worker_startup(
    procs: Processes, redis_url: str, queue: str, concurrency: int = 2
) -> dict[str, Any]:
    """Start a raw Celery worker; time it to its first answered ping (the Celery floor)."""
    app = raw_celery_app.create_app(redis_url, queue)
    target = raw_celery_target(app)
    t0 = time.perf_counter()
    child = start_raw_worker(procs, redis_url, queue, f"{queue}@host", concurrency)
    try:
        wait_first_result(target, child)
        t_first = time.perf_counter()
    finally:
        t_stop = time.perf_counter()
        procs.stop(child)
        stopped = time.perf_counter()
        app.close()
    return {
        "concurrency": concurrency,
        "first_call_ms": round((t_first - t0) * 1000, 1),
        "stop_ms": round((stopped - t_stop) * 1000, 1),
    }


def startups(
    procs: Processes,
    app: Celery,
    redis_url: str,
    sizes: Sequence[int],
    repeats: int,
    tag: str,
    progress: Progress,
) -> dict[str, Any]:
    """Node start-up for each size (median of ``repeats``), plus the raw Celery reference."""
    by_size: dict[str, Any] = {}
    raw_runs: list[dict[str, Any]] = []
    for rep in range(repeats):
        for size in sizes:
            run = node_startup(procs, app, redis_url, size, f"bstart{size}r{rep}{tag}")
            progress(f"start-up {size} workers #{rep + 1}: ready {run['ready_ms']:.0f} ms")
            by_size.setdefault(str(size), []).append(run)
        run = raw_worker_startup(procs, redis_url, f"bench.rawstart{rep}{tag}")
        progress(f"start-up raw Celery #{rep + 1}: first call {run['first_call_ms']:.0f} ms")
        raw_runs.append(run)
    fields = ("ready_ms", "first_call_ms", "boot_ms", "first_spawn_ms", "workers_ms", "stop_ms")
    summary = {
        size: {
            "workers": int(size),
            "repeats": len(runs),
            **{f: _median([r[f] for r in runs]) for f in fields},
            "runs": runs,
        }
        for size, runs in by_size.items()
    }
    raw = {
        "concurrency": 2,
        "repeats": len(raw_runs),
        "first_call_ms": round(statistics.median(r["first_call_ms"] for r in raw_runs), 1),
        "stop_ms": round(statistics.median(r["stop_ms"] for r in raw_runs), 1),
        "runs": raw_runs,
    }
    return {"nodes": summary, "raw_celery": raw}
