"""The streaming measurements: chunk throughput and per-chunk latency, snakepit next to a raw
gRPC server stream from one runtime, plus the Redis stream hop alone (the floor under it)."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from .procs import BenchError
from .stats import summarize
from .systems import StreamSource

Progress = Callable[[str], None]


def _throughput_run(source: StreamSource, chunks: int) -> dict[str, Any]:
    """One ``stream_count(n=chunks)`` consumed as fast as the callback is called."""
    perf = time.perf_counter
    got = 0
    first: float | None = None

    def on_chunk(chunk: dict[str, Any]) -> None:
        nonlocal got, first
        got += 1
        if chunk.get("i") != got:
            raise BenchError(
                f"{source.label}: chunk {got} arrived as {chunk!r} (a chunk lost or reordered)"
            )
        if first is None:
            first = perf()

    started = perf()
    final = source.run("stream_count", {"n": chunks}, on_chunk)
    done = perf()
    if got != chunks or not (isinstance(final, dict) and final.get("count") == chunks):
        raise BenchError(f"{source.label}: {got} of {chunks} chunks, final result {final!r}")
    return {
        "chunks": chunks,
        "total_s": round(done - started, 4),
        "chunks_per_s": round(chunks / (done - started), 1),
        # From the call to its first chunk in hand, while the tool bursts out every chunk:
        # mostly a measure of CPU contention at the start (see chunk_latency for set-up).
        "first_chunk_ms": None if first is None else round((first - started) * 1000, 3),
        # From the first chunk to the final result: the streaming rate proper.
        "steady_chunks_per_s": (
            None if first is None or done <= first else round((chunks - 1) / (done - first), 1)
        ),
    }


def _latency_run(
    source: StreamSource, chunks: int, delay: float, into: list[float]
) -> float:
    """One ``timed(n=chunks, delay)``: each chunk's yield time (in the runtime) to its callback
    (here), on the machine's one wall clock, appended to ``into``; returns the seconds from the
    call to its first chunk in hand (``timed`` yields its first chunk at once)."""
    now = time.time
    got = 0
    first = 0.0

    def on_chunk(chunk: dict[str, Any]) -> None:
        nonlocal got, first
        arrived = now()
        into.append(arrived - chunk["t"])
        got += 1
        if got == 1:
            first = arrived

    started = now()
    source.run("timed", {"n": chunks, "delay": delay}, on_chunk)
    if got != chunks:
        raise BenchError(f"{source.label}: {got} of {chunks} timed chunks arrived")
    return first - started


def chunk_throughput(
    sources: Sequence[StreamSource], chunks: int, rounds: int, say: Progress
) -> dict[str, dict[str, Any]]:
    """``rounds`` streams of ``chunks`` chunks per source, alternating; the median round."""
    runs: dict[str, list[dict[str, Any]]] = {s.key: [] for s in sources}
    for i in range(rounds):
        order = sources if i % 2 == 0 else list(reversed(sources))
        for s in order:
            run = _throughput_run(s, chunks)
            runs[s.key].append(run)
            say(f"stream of {chunks:,} chunks, {s.key}: {run['chunks_per_s']:,.0f} chunks/s")
    out: dict[str, dict[str, Any]] = {}
    for s in sources:
        rs = runs[s.key]
        steady = [r["steady_chunks_per_s"] for r in rs if r["steady_chunks_per_s"] is not None]
        first = [r["first_chunk_ms"] for r in rs if r["first_chunk_ms"] is not None]
        out[s.key] = {
            "label": s.label,
            "chunks": chunks,
            "rounds": rounds,
            "chunks_per_s": round(statistics.median(r["chunks_per_s"] for r in rs), 1),
            "best_chunks_per_s": max(r["chunks_per_s"] for r in rs),
            "steady_chunks_per_s": round(statistics.median(steady), 1) if steady else None,
            "first_chunk_ms": round(statistics.median(first), 3) if first else None,
            "runs": rs,
        }
    return out


def chunk_latency(
    sources: Sequence[StreamSource],
    chunks: int,
    streams: int,
    rounds: int,
    delay: float,
    say: Progress,
) -> dict[str, dict[str, Any]]:
    """Per-chunk latency, yield → callback: ``streams`` streams of ``chunks`` chunks ``delay``
    s apart per source and round, the rounds alternating the sources; every chunk is one
    sample, and every stream one sample of the time from the call to its first chunk."""
    samples: dict[str, list[float]] = {s.key: [] for s in sources}
    firsts: dict[str, list[float]] = {s.key: [] for s in sources}
    for i in range(rounds):
        order = sources if i % 2 == 0 else list(reversed(sources))
        for s in order:
            for _ in range(streams):
                firsts[s.key].append(_latency_run(s, chunks, delay, samples[s.key]))
        say(f"chunk latency round {i + 1}/{rounds} done")
    out: dict[str, dict[str, Any]] = {}
    for s in sources:
        first = summarize(firsts[s.key])
        out[s.key] = {
            "label": s.label,
            "delay_ms": delay * 1000,
            **summarize(samples[s.key]),
            "streams": len(firsts[s.key]),
            "first_chunk_median_ms": first.get("median_ms"),
            "first_chunk_p90_ms": first.get("p90_ms"),
            "first_chunk_max_ms": first.get("max_ms"),
        }
    return out


def redis_stream_hop(redis_url: str, key: str, chunks: int, delay: float) -> dict[str, Any]:
    """The Redis stream hop alone: a thread XADDs ``{t: time.time()}`` every ``delay`` s, this
    thread waits in a blocking XREAD; XADD → entry in hand, per entry. No gRPC, no node."""
    writer = redis.Redis.from_url(redis_url)
    reader = redis.Redis.from_url(redis_url, socket_timeout=None)
    failed: list[BaseException] = []
    stop = threading.Event()

    def produce() -> None:
        try:
            for _ in range(chunks):
                if stop.wait(delay):
                    return
                writer.xadd(key, {b"t": repr(time.time()).encode()}, maxlen=chunks + 10)
        except BaseException as exc:  # reported below
            failed.append(exc)

    samples: list[float] = []
    last: bytes | str = "0-0"
    thread = threading.Thread(target=produce, name="bench-xadd", daemon=True)
    try:
        reader.delete(key)
        thread.start()
        while len(samples) < chunks and not failed:
            reply: Any = reader.xread({key: last}, count=1000, block=1000)
            now = time.time()
            for _, items in reply or ():
                for entry_id, fields in items:
                    samples.append(now - float(fields[b"t"]))
                    last = entry_id
        if failed:
            raise BenchError(f"Redis stream hop: the writer failed: {failed[0]!r}")
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(5)
        try:
            reader.delete(key)
        finally:
            reader.close()
            writer.close()
    return {
        "label": "Redis XADD → blocked XREAD (floor of the Redis hop)",
        "delay_ms": delay * 1000,
        **summarize(samples),
    }
