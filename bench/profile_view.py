"""A profile read per call: for each function, its time divided by the number of calls the
profiled process served, so "where the time of one call goes" reads off directly."""

from __future__ import annotations

import pstats
import re
from typing import Any


def per_call(
    stats: pstats.Stats, calls: int, pattern: str, max_us: float | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """Functions whose ``file:line(name)`` matches ``pattern`` and that ran at least once per
    two calls, by cumulative time per call (µs), with their own time per call. ``max_us``
    (the measured time of one call) leaves out what takes longer per call than a call does:
    idle waits between calls (a thread blocked on its queue, a lock held by no call)."""
    wanted = re.compile(pattern)
    rows = []
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (path, line, name), (_cc, ncalls, tottime, cumtime, _callers) in raw.items():
        where = f"{path}:{line}({name})"
        if ncalls * 2 < calls or not wanted.search(where):
            continue
        if max_us is not None and cumtime / calls * 1e6 > max_us:
            continue
        rows.append({
            "function": _short(path, line, name),
            "per_call": round(ncalls / calls, 2),
            "cum_us": round(cumtime / calls * 1e6, 1),
            "own_us": round(tottime / calls * 1e6, 1),
        })
    rows.sort(key=lambda r: -r["cum_us"])
    return rows[:limit]


def _short(path: str, line: int, name: str) -> str:
    for marker in ("site-packages/", "/snakepit_tasks/", "/bench/"):
        if marker in path:
            path = ("snakepit_tasks/" if marker == "/snakepit_tasks/" else
                    "bench/" if marker == "/bench/" else "") + path.split(marker, 1)[1]
            break
    return f"{path}:{line}({name})" if path != "~" else name


def text(rows: list[dict[str, Any]]) -> str:
    lines = [f"  {'cum µs/call':>11} {'own µs/call':>11} {'n/call':>6}  function"]
    for r in rows:
        lines.append(f"  {r['cum_us']:>11.1f} {r['own_us']:>11.1f} {r['per_call']:>6.2f}  "
                     f"{r['function']}")
    return "\n".join(lines)
