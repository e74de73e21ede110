"""A big node: start ``size`` workers (100 by default), time it to ready and to stopped, and
count the adapter runtimes still alive after the node has gone (orphans, by pid)."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Any

from .footprint import alive, node_footprint, runtimes_of
from .procs import Processes
from .systems import start_node, wait_workers_ready


def start_stop(
    procs: Processes, redis_url: str, size: int, name: str, grace: float = 5.0
) -> dict[str, Any]:
    """Start a node of ``size`` workers; SIGTERM it once ready; count its runtimes left.

    Orphans are the runtimes' pids (from the node's lease, and every process whose command
    line is a runtime started by that node) still running ``grace`` seconds after the node
    process exited. Any found are then killed, and counted in the result.
    """
    t0 = time.perf_counter()
    child = start_node(procs, redis_url, name, size, f"{name}@host")
    try:
        nodes = wait_workers_ready(redis_url, name, size, child, timeout=600)
        ready_ms = (time.perf_counter() - t0) * 1000
        pid = child.process.pid
        lease_pids = {int(w["pid"]) for n in nodes for w in n["workers"] if w.get("pid")}
        pids = lease_pids | runtimes_of(pid)
        memory = node_footprint(pid, lease_pids)
        t_stop = time.perf_counter()
        child.process.send_signal(signal.SIGTERM)
        try:
            child.process.wait(120)
            exited = True
        except subprocess.TimeoutExpired:
            exited = False
        stop_ms = (time.perf_counter() - t_stop) * 1000
        deadline = time.monotonic() + grace
        left = alive(pids) | runtimes_of(pid)
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = alive(pids) | runtimes_of(pid)
    finally:
        procs.stop(child)  # kills the group (and owned runtimes) if anything is left
    return {
        "workers": size,
        "ready_ms": round(ready_ms, 1),
        "stop_ms": round(stop_ms, 1),
        "node_exited_on_sigterm": exited,
        "runtime_pids": len(pids),
        "orphans": len(left),
        "orphan_pids": sorted(left),
        "grace_s": grace,
        **memory,
    }
