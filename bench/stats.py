"""Summaries of timing samples."""

from __future__ import annotations

import statistics
from typing import Any


def summarize(seconds: list[float]) -> dict[str, Any]:
    """Median, p90, p99 (inclusive quantiles), mean, min and max of ``seconds``, in ms."""
    ms = sorted(s * 1000 for s in seconds)
    if not ms:
        return {"n": 0}
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else [ms[0]] * 99
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 4),
        "p90_ms": round(q[89], 4),
        "p99_ms": round(q[98], 4),
        "mean_ms": round(statistics.fmean(ms), 4),
        "min_ms": round(ms[0], 4),
        "max_ms": round(ms[-1], 4),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` rounded, or None when either is missing or ``b`` is zero."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)
