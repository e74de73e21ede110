"""CPU time per process over a measurement: which process spends the CPU a figure costs.

On a machine with few cores a throughput figure is CPU-bound, so "where the time goes" is
CPU seconds per unit of work in each process (caller, node, runtimes, Redis), from
``/proc/<pid>/stat`` (user + system) and, for this process, ``os.times()``.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from typing import Any

from .systems import StreamSource

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)


def _own() -> float:
    t = os.times()
    return t.user + t.system


def snapshot(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far per role (``"caller"`` is this process)."""
    out = {"caller": _own()}
    for role, group in pids.items():
        out[role] = sum(s for s in (cpu_seconds(p) for p in group) if s is not None)
    return out


def metered(
    source: StreamSource,
    pids: Callable[[], dict[str, list[int]]],
    units: Callable[[Any], int],
    into: list[dict[str, float]],
) -> StreamSource:
    """``source`` whose every run appends the CPU µs per unit (``units(args)``) of each role."""

    def run(tool: str, args: dict[str, Any], on_chunk: Callable[[dict[str, Any]], Any]) -> Any:
        group = pids()
        before = snapshot(group)
        result = source.run(tool, args, on_chunk)
        after = snapshot(group)
        n = max(1, units(args))
        into.append({role: round((after[role] - before[role]) / n * 1e6, 2) for role in after})
        return result

    return StreamSource(source.key, source.label, run)


def median_per_role(runs: list[dict[str, float]]) -> dict[str, float]:
    """The median of each role over ``runs``, and their sum as ``"total"``."""
    if not runs:
        return {}
    out = {role: round(statistics.median(r[role] for r in runs), 1) for role in runs[0]}
    out["total"] = round(sum(out.values()), 1)
    return out
