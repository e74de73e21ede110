"""Memory per process (resident set size from ``/proc/<pid>/status``) and the runtimes a node
owns, found by their command line."""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable
from typing import Any

RUNTIME_MODULE = "snakepit_tasks.bridge.runtime"


def rss_kib(pid: int | None) -> int | None:
    """``VmRSS`` of ``pid`` in KiB, or None when it is gone (or not on Linux)."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _mib(kib: float | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def runtimes_of(node_pid: int) -> set[int]:
    """Pids of live adapter runtimes started by the node ``node_pid`` (``--parent-pid``)."""
    found: set[int] = set()
    marker = f"--parent-pid\0{node_pid}\0".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if RUNTIME_MODULE.encode() in cmdline and marker in cmdline:
            found.add(int(entry))
    return found


def alive(pids: Iterable[int]) -> set[int]:
    """Those of ``pids`` that still run (zombies count as gone)."""
    out: set[int] = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                state = next((ln for ln in f if ln.startswith("State:")), "")
        except OSError:
            continue
        if " Z " not in state and "zombie" not in state:
            out.add(pid)
    return out


def node_footprint(node_pid: int, worker_pids: Iterable[int]) -> dict[str, Any]:
    """RSS of a node process and of each of its runtimes, in MiB."""
    workers = [k for k in (rss_kib(p) for p in worker_pids) if k is not None]
    node = rss_kib(node_pid)
    return {
        "node_rss_mib": _mib(node),
        "worker_rss_mib": _mib(statistics.median(workers)) if workers else None,
        "worker_rss_max_mib": _mib(max(workers)) if workers else None,
        "workers": len(workers),
        "total_rss_mib": _mib((node or 0) + sum(workers)),
    }


def process_rss_mib(pid: int | None) -> float | None:
    return _mib(rss_kib(pid))
