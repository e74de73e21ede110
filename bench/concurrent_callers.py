"""Throughput with concurrent synchronous callers: N threads, each making sequential calls.

What a web app does: several request threads, each waiting on its own call. Every system is
timed with the same callers and calls, in alternating rounds; the figure is the median round.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import cpu
from .procs import BenchError
from .systems import Target

CommandCounter = Callable[[], dict[str, int]]


def _round(target: Target, callers: int, calls: int, commands: CommandCounter | None,
           pids: dict[str, list[int]] | None = None) -> dict[str, Any]:
    per_caller = [calls // callers + (1 if i < calls % callers else 0) for i in range(callers)]
    failures: list[BaseException] = []
    start = threading.Barrier(callers + 1)

    def work(n: int) -> None:
        call = target.call
        start.wait()
        try:
            for _ in range(n):
                call()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in per_caller]
    for t in threads:
        t.start()
    before = sum(commands().values()) if commands else 0
    cpu_before = cpu.snapshot(pids) if pids is not None else {}
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    cpu_after = cpu.snapshot(pids) if pids is not None else {}
    after = sum(commands().values()) if commands else 0
    if failures:
        raise BenchError(f"{target.label}, {callers} concurrent callers: {failures[0]!r}")
    return {
        "calls": calls,
        "total_s": round(elapsed, 4),
        "calls_per_s": round(calls / elapsed, 1),
        "redis_commands_per_call": round((after - before) / calls, 1) if commands else None,
        "cpu_us_per_call": {role: round((cpu_after[role] - cpu_before[role]) / calls * 1e6, 1)
                            for role in cpu_after},
    }


def throughput(
    targets: Sequence[Target],
    callers: int,
    calls: int,
    rounds: int,
    commands: CommandCounter | None = None,
    pids: dict[str, Callable[[], dict[str, list[int]]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """``calls`` synchronous calls made by ``callers`` threads, per target and round.

    ``pids``: per target key, the processes serving it by role; each round then counts the CPU
    µs per call of each role (and of this process, the callers)."""
    for t in targets:  # each thread's first call (connections, clients) is not timed
        _round(t, callers, callers, None)
    runs: dict[str, list[dict[str, Any]]] = {t.key: [] for t in targets}
    for i in range(rounds):
        order = list(targets[i % len(targets):]) + list(targets[: i % len(targets)])
        for t in order:
            group = pids[t.key]() if pids and t.key in pids else None
            runs[t.key].append(_round(t, callers, calls, commands, group))
    return {
        t.key: {
            "label": t.label,
            "callers": callers,
            "calls": calls,
            "rounds": rounds,
            "calls_per_s": round(statistics.median(r["calls_per_s"] for r in runs[t.key]), 1),
            "redis_commands_per_call": runs[t.key][-1]["redis_commands_per_call"],
            "cpu_us_per_call": cpu.median_per_role(
                [r["cpu_us_per_call"] for r in runs[t.key] if r["cpu_us_per_call"]]
            ),
            "runs": runs[t.key],
        }
        for t in targets
    }
