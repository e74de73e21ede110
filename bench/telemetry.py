"""What a telemetry event costs: ``python -m bench.telemetry``.

Times :func:`snakepit_tasks.telemetry.emit` with no handler attached (the default, and what
every call pays at each emission point), with a handler attached to another event, and with
one handler attached to it; beside an empty function call and the emission point as written in
the code (building its two dicts). Nanoseconds per emit, best of several rounds; no Redis, no
processes, a few seconds.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from typing import Any

from snakepit_tasks import telemetry

EVENT = ("snakepit", "call", "executed")
OTHER = ("snakepit", "worker", "crash")
MEASUREMENTS = {"duration_us": 1234}
METADATA = {"call_id": "c", "tool": "ping", "pool": "p", "node": "n", "worker_id": "n/0",
            "session_id": None, "success": True, "error": None, "streaming": False}


def _nothing(*_: Any) -> None:
    return None


def cases() -> dict[str, Callable[[], None]]:
    emit = telemetry.emit
    m, md = MEASUREMENTS, METADATA

    def emission_point() -> None:  # as in node.py: the dicts are built at every emission
        emit(EVENT, {"duration_us": 1234}, {
            "call_id": "c", "tool": "ping", "pool": "p", "node": "n", "worker_id": "n/0",
            "session_id": None, "success": True, "error": None, "streaming": False})

    return {
        "empty function call (floor)": lambda: _nothing(EVENT, m, md),
        "emit, no handler": lambda: emit(EVENT, m, md),
        "emit, no handler, dicts built at the call": emission_point,
        "emit, a handler on another event": lambda: emit(EVENT, m, md),
        "emit, one handler": lambda: emit(EVENT, m, md),
    }


def measure(fn: Callable[[], None], number: int, repeat: int) -> float:
    """Best nanoseconds per call of ``fn`` over ``repeat`` rounds of ``number`` calls."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e9


def run(number: int, repeat: int) -> dict[str, float]:
    results: dict[str, float] = {}
    for name, fn in cases().items():
        if name == "emit, a handler on another event":
            telemetry.attach("bench-other", OTHER, _nothing)
        if name == "emit, one handler":
            telemetry.attach("bench-one", EVENT, _nothing)
        try:
            results[name] = measure(fn, number, repeat)
        finally:
            telemetry.detach("bench-other")
            telemetry.detach("bench-one")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.telemetry", description=__doc__)
    parser.add_argument("--number", type=int, default=200_000, help="calls per round")
    parser.add_argument("--repeat", type=int, default=7, help="rounds (the best is kept)")
    ns = parser.parse_args(argv)
    results = run(ns.number, ns.repeat)
    width = max(map(len, results))
    print(f"{'case':<{width}}  ns/emit")
    for name, ns_per in results.items():
        print(f"{name:<{width}}  {ns_per:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
