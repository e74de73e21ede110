"""Large data, 256 MiB of it: ``python -m bench.zero_copy`` (about a minute).

In one run, next to each other: a raw memory copy (the physical limit); writing the table's
Arrow IPC stream into a pre-faulted, reused arena segment vs into a fresh memory file per
transfer (the design choice of snakepit_tasks/zero_copy/arena.py); a tool returning the
table through snakepit's zero-copy path to a caller on the same host (shared memory) and
through Arrow Flight (loopback); the same table pickled through a plain Celery task and its
Redis result backend; and the handle itself (its size, and the time to map a 256 MiB value
from it). Effective GB/s = table bytes / time until the caller holds the table. For Flight
also the CPU time each process spent per transfer (caller, node, runtime): on a shared
machine the wall time moves with the others' load, the CPU time much less.

Each figure is the median of ``--repeats`` runs after one warm-up. A private redis-server,
one snakepit node (1 worker of adapters.data:DataAdapter, the table built once) and one
Celery worker are started and stopped. One table exists at a time per process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

import snakepit_tasks as sp
from snakepit_tasks import serialization
from snakepit_tasks.embedded_redis import EmbeddedRedis
from snakepit_tasks.zero_copy import Options, arena, ipc, process

from . import zero_copy_celery
from .procs import Processes, cleanup_on_signals
from .systems import CELERY_FLAGS, _child_env, start_node, wait_workers_ready

GB = 1e9
DATA = "adapters.data:DataAdapter"


def timed(fn: Callable[[], Any], repeats: int, after: Callable[[Any], None] = lambda v: None
          ) -> list[float]:
    """Seconds per run of ``fn`` (one untimed warm-up first); ``after`` gets each result."""
    after(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
        after(value)
        del value
    return times


class CpuMeter:
    """CPU seconds this process and ``pids`` spent during each call of a wrapped function."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.samples: list[dict[str, float]] = []

    def now(self) -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        seconds = {"caller": usage.ru_utime + usage.ru_stime}
        for name, pid in self.pids.items():
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            seconds[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return seconds

    def wrap(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        def measured() -> Any:
            before = self.now()
            value = fn()
            after = self.now()
            self.samples.append({k: after[k] - before[k] for k in after})
            return value

        return measured

    def medians(self) -> dict[str, float]:
        """Median seconds per process over the calls after the first (the warm-up)."""
        kept = self.samples[1:]
        return {k: statistics.median(s[k] for s in kept) for k in kept[0]} if kept else {}


def memcpy(nbytes: int, repeats: int) -> list[float]:
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.zeros(nbytes, dtype=np.uint8)
    return timed(lambda: np.copyto(dst, src), repeats)


def arena_writes(table: pa.Table, repeats: int) -> dict[str, list[float]]:
    """Write ``table`` as IPC into a reused pre-faulted segment, and into a fresh one."""
    data = ipc.to_arrow(table, "table")
    length = ipc.stream_size(data)

    def write(segment: Any) -> None:
        view = segment.data
        sink = pa.FixedSizeBufferWriter(pa.py_buffer(view))
        ipc.write(data, sink)
        sink.close()
        del sink
        view.release()

    reused = arena.Arena(idle_ms=60_000)

    def into_reused() -> None:
        segment = reused.allocate(length, 60_000)
        write(segment)
        reused.release(segment.handle_id)

    def into_fresh() -> None:
        fresh = arena.Arena(idle_ms=0)  # every segment new: pages faulted during the write
        segment = fresh.allocate(length, 60_000)
        write(segment)
        fresh.close()

    result = {"reused": timed(into_reused, repeats), "fresh": timed(into_fresh, repeats)}
    reused.close()
    return result


def handle_figures(table: pa.Table, repeats: int) -> dict[str, Any]:
    """The handle of a 256 MiB value: bytes on the wire, encoding it, mapping it back."""
    options = Options(threshold_bytes=1, transport="shm", arena_idle_ms=60_000)
    exporter = process.exporter(options, "bench")
    sizes, encodes, maps = [], [], []
    for _ in range(repeats + 1):
        data = serialization.encode_result({"table": table}, exporter.begin(
            arguments=False).default)
        wire = serialization.decode(data)["table"]
        sizes.append(len(data))
        start = time.perf_counter()
        serialization.encode_result({"table": wire})
        encodes.append(time.perf_counter() - start)
        start = time.perf_counter()
        value = sp.zero_copy.materialize(wire)
        maps.append(time.perf_counter() - start)
        assert value.num_rows == table.num_rows
        sp.zero_copy.release(value)
        del value
    return {"bytes": sizes[-1], "encode_s": encodes[1:], "map_s": maps[1:]}


def run(mib: int, repeats: int) -> dict[str, Any]:
    nbytes = mib * 2**20
    figures: dict[str, Any] = {"mib": mib, "repeats": repeats, "cpus": os.cpu_count()}
    figures["memcpy"] = memcpy(nbytes, repeats)
    table = pa.table({"n": np.arange(nbytes // 8, dtype=np.int64)})
    figures["arena"] = arena_writes(table, repeats)
    figures["handle"] = handle_figures(table, repeats)
    del table
    procs = Processes()
    server = EmbeddedRedis().start()
    try:
        with cleanup_on_signals():
            tag = uuid.uuid4().hex[:6]
            pool, queue = f"zc{tag}", f"bench.zc.{tag}"
            node = start_node(procs, server.url, pool, 1, f"{pool}@bench", adapter=DATA)
            cmd = [sys.executable, "-m", "celery", "-A", "bench.zero_copy_celery", "worker",
                   "-P", "threads", "-c", "1", "-n", f"raw{tag}@bench", "-Q", queue,
                   *CELERY_FLAGS]
            procs.start("raw", cmd, _child_env(BENCH_RAW_REDIS_URL=server.url,
                                               BENCH_RAW_QUEUE=queue))
            [lease] = wait_workers_ready(server.url, pool, 1, node)
            [worker] = lease["workers"]
            pools = [{"name": pool, "adapter": DATA, "pool_size": 1}]
            args = {"mib": mib, "cache": True}

            def release(value: Any) -> None:
                assert value.num_rows == nbytes // 8
                sp.zero_copy.release(value)

            app = sp.configure(redis_url=server.url, pools=pools)
            figures["ping_s"] = timed(
                lambda: sp.execute("make_table", {"mib": 0.001}, pool=pool, app=app),
                repeats * 5)
            figures["shm"] = timed(lambda: sp.execute("make_table", args, pool=pool, app=app),
                                   repeats, release)
            app = sp.configure(redis_url=server.url, pools=pools, zero_copy_transport="flight")
            meter = CpuMeter({"node": node.process.pid, "runtime": int(worker["pid"])})
            figures["flight"] = timed(meter.wrap(
                lambda: sp.execute("make_table", args, pool=pool, app=app)), repeats, release)
            figures["flight_cpu_s"] = meter.medians()
            raw = zero_copy_celery.create_app(server.url, queue)
            task = raw.tasks[zero_copy_celery.TABLE]
            figures["pickle"] = timed(lambda: task.delay(mib).get(timeout=120), repeats,
                                      lambda v: None)
    finally:
        procs.stop_all()
        server.stop()
    return figures


def report(figures: dict[str, Any]) -> str:
    nbytes = figures["mib"] * 2**20
    copy = statistics.median(figures["memcpy"])

    def row(name: str, seconds: list[float], what: str) -> str:
        median = statistics.median(seconds)
        return (f"| {name} | {median * 1000:.1f} ms | {nbytes / median / GB:.2f} GB/s | "
                f"{copy / median:.2f}× | {what} |")

    hand = figures["handle"]
    flight = figures["flight"]
    cpu = "; ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in
                    figures.get("flight_cpu_s", {}).items())
    lines = [
        f"{figures['mib']} MiB table (int64 column), median of {figures['repeats']} runs, "
        f"{figures['cpus']} CPUs",
        "",
        "| path | time | effective | vs memcpy | what is timed |",
        "|---|---|---|---|---|",
        row("memcpy", figures["memcpy"], "numpy copy into a faulted-in buffer: the limit"),
        row("IPC into the arena (reused segment)", figures["arena"]["reused"],
            "write the table's Arrow IPC stream into a pre-faulted segment"),
        row("IPC into a fresh memory file", figures["arena"]["fresh"],
            "the same into a new memfd each time (page faults)"),
        row("snakepit zero-copy, same host", figures["shm"],
            "execute() of a tool returning the table → caller holds a mapped pa.Table"),
        row("snakepit zero-copy, Arrow Flight", figures["flight"],
            "the same with zero_copy_transport='flight' (loopback)"),
        row("pickle through Celery + Redis", figures["pickle"],
            "plain Celery task returning the table, pickle serializer, Redis backend"),
        "",
        f"Arrow Flight: {min(flight) * 1000:.0f}–{max(flight) * 1000:.0f} ms across the runs; "
        f"CPU per transfer (median): {cpu}",
        f"handle: {hand['bytes']} bytes on the wire; encoding it "
        f"{statistics.median(hand['encode_s']) * 1e6:.0f} µs; mapping the 256 MiB value "
        f"from it {statistics.median(hand['map_s']) * 1e6:.0f} µs; a call returning a small "
        f"table inline (the path the handle takes) "
        f"{statistics.median(figures['ping_s']) * 1000:.2f} ms round trip",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.zero_copy", description=__doc__)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default="bench/results/zero_copy.json")
    ns = parser.parse_args(argv)
    figures = run(ns.mib, ns.repeats)
    print(report(figures))
    os.makedirs(os.path.dirname(ns.output) or ".", exist_ok=True)
    with open(ns.output, "w") as f:
        json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
