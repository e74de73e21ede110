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

from .procs import BenchError
from .systems import Target

CommandCounter = Callable[[], dict[str, int]]


def _round(target: Target, callers: int, calls: int, commands: CommandCounter | None
           ) -> dict[str, Any]:
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
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    after = sum(commands().values()) if commands else 0
    if failures:
        raise BenchError(f"{target.label}, {callers} concurrent callers: {failures[0]!r}")
    return {
        "calls": calls,
        "total_s": round(elapsed, 4),
        "calls_per_s": round(calls / elapsed, 1),
        "redis_commands_per_call": round((after - before) / calls, 1) if commands else None,
    }


def throughput(
    targets: Sequence[Target],
    callers: int,
    calls: int,
    rounds: int,
    commands: CommandCounter | None = None,
) -> dict[str, dict[str, Any]]:
    """``calls`` synchronous calls made by ``callers`` threads, per target and round."""
    for t in targets:  # each thread's first call (connections, clients) is not timed
        _round(t, callers, callers, None)
    runs: dict[str, list[dict[str, Any]]] = {t.key: [] for t in targets}
    for i in range(rounds):
        order = list(targets[i % len(targets):]) + list(targets[: i % len(targets)])
        for t in order:
            runs[t.key].append(_round(t, callers, calls, commands))
    return {
        t.key: {
            "label": t.label,
            "callers": callers,
            "calls": calls,
            "rounds": rounds,
            "calls_per_s": round(statistics.median(r["calls_per_s"] for r in runs[t.key]), 1),
            "redis_commands_per_call": runs[t.key][-1]["redis_commands_per_call"],
            "runs": runs[t.key],
        }
        for t in targets
    }
