"""The one table of a run: every figure next to its reference, the ratio, the target (issue 10,
point 8) and whether it was met. Built from the results dict alone, as Markdown."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .stats import ratio

# Not a target of issue 10 point 8, a decision rule of point 5: not counted as met or missed.
BIDI_TARGET = "bidi if > 20% faster"


@dataclass(frozen=True)
class Row:
    measure: str
    snakepit: str
    reference: str
    ratio: str = ""
    target: str = ""
    verdict: str = ""  # "met", "missed", "" (no target), or why not measured


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def fmt_rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _verdict(value: float | None, ok: Callable[[float], bool]) -> str:
    if value is None:
        return "not measured"
    return "met" if ok(value) else "missed"


def _le(limit: float) -> Callable[[float], bool]:
    return lambda v: v <= limit


def _ge(limit: float) -> Callable[[float], bool]:
    return lambda v: v >= limit


def _below(limit: float) -> Callable[[float], bool]:
    return lambda v: v < limit


def _mp(row: dict[str, Any] | None) -> str:
    return "—" if not row else f"{fmt_ms(row.get('median_ms'))} / {fmt_ms(row.get('p99_ms'))} ms"


def _ratio_mp(a: dict[str, Any] | None, b: dict[str, Any] | None) -> tuple[float | None, str]:
    if not a or not b:
        return None, "—"
    med = ratio(a.get("median_ms"), b.get("median_ms"))
    p99 = ratio(a.get("p99_ms"), b.get("p99_ms"))
    return med, f"{fmt_ratio(med)} / {fmt_ratio(p99)}"


def rows(results: dict[str, Any]) -> list[Row]:
    """Every row of the table, in a fixed order; missing phases give "not measured" rows."""
    rt: dict[str, Any] = results.get("round_trip") or {}
    raw = rt.get("raw_celery")
    out: list[Row] = []

    med, text = _ratio_mp(rt.get("snakepit"), raw)
    out.append(Row('sync `execute("ping")`, fast lane (default), median / p99',
                   _mp(rt.get("snakepit")),
                   f"raw Celery round trip {_mp(raw)}", text, "≤ 0.5× median",
                   _verdict(med, _le(0.5))))
    med, text = _ratio_mp(rt.get("snakepit_celery"), raw)
    out.append(Row('sync `execute("ping")`, Celery lane (`fast_lane=false`)',
                   _mp(rt.get("snakepit_celery")), f"raw Celery {_mp(raw)}", text))
    ses = rt.get("snakepit_session")
    med, text = _ratio_mp(ses, raw)
    out.append(Row('session call `execute_in_session(sid, "ping")`, fast lane', _mp(ses),
                   f"raw Celery {_mp(raw)}", text))
    ray_row = rt.get("ray_actor")
    if ray_row:
        med, text = _ratio_mp(ses, ray_row)
        out.append(Row("session call vs a Ray actor method call `ping()`", _mp(ses),
                       f"Ray actor {_mp(ray_row)}", text, "≤ 1.0× median",
                       _verdict(med, _le(1.0))))
    else:
        why = (results.get("ray") or {}).get("status") or "not measured"
        out.append(Row("session call vs a Ray actor method call `ping()`", _mp(ses), why, "—",
                       "≤ 1.0× median", why))
    med, text = _ratio_mp(rt.get("snakepit_async"), raw)
    out.append(Row('`execute_async("ping").get()` (Celery)', _mp(rt.get("snakepit_async")),
                   f"raw Celery {_mp(raw)}", text, "≤ 1.2× median", _verdict(med, _le(1.2))))

    tp = results.get("throughput") or {}
    a, b = tp.get("snakepit"), tp.get("raw_celery")
    r = ratio(a and a["calls_per_s"], b and b["calls_per_s"])
    n = (a or b or {}).get("calls", 0)
    out.append(Row(f"throughput, {n:,} `execute_async` sent then gathered (Celery path)",
                   f"{fmt_rate(a and a['calls_per_s'])} calls/s",
                   f"raw Celery {fmt_rate(b and b['calls_per_s'])} calls/s", fmt_ratio(r), "≥ 0.9×",
                   _verdict(r, _ge(0.9))))
    cc = results.get("concurrent") or {}
    base = cc.get("raw_celery")
    callers = (base or {}).get("callers", 8)
    lanes = (("snakepit", "fast lane", 2.0), ("snakepit_celery", "Celery lane", 0.9))
    for key, lane, limit in lanes:
        mine = cc.get(key)
        r = ratio(mine and mine["calls_per_s"], base and base["calls_per_s"])
        out.append(Row(f"throughput, {callers} concurrent sync callers, {lane}",
                       f"{fmt_rate(mine and mine['calls_per_s'])} calls/s",
                       f"raw Celery, {callers} callers: {fmt_rate(base and base['calls_per_s'])} "
                       "calls/s", fmt_ratio(r), f"≥ {limit:g}×", _verdict(r, _ge(limit))))

    st = results.get("streaming") or {}
    stp = st.get("throughput") or {}
    a, b = stp.get("snakepit"), stp.get("raw_grpc")
    r = ratio(a and a["chunks_per_s"], b and b["chunks_per_s"])
    cpu = st.get("cpu_us_per_chunk") or {}

    def _cpu(key: str) -> str:
        total = (cpu.get(key) or {}).get("total")
        return "" if total is None else f" ({total:.0f} µs CPU/chunk)"

    out.append(Row(f"stream chunks/s, one stream of {(a or {}).get('chunks', 0):,} chunks",
                   f"{fmt_rate(a and a['chunks_per_s'])} chunks/s{_cpu('snakepit')}",
                   f"raw gRPC server stream {fmt_rate(b and b['chunks_per_s'])} chunks/s"
                   f"{_cpu('raw_grpc')}", fmt_ratio(r), "≥ 0.9×", _verdict(r, _ge(0.9))))
    lat = st.get("latency") or {}
    _, text = _ratio_mp(lat.get("snakepit"), lat.get("raw_grpc"))
    out.append(Row("stream chunk latency, yield → callback, median / p99",
                   _mp(lat.get("snakepit")), f"raw gRPC {_mp(lat.get('raw_grpc'))}", text))

    nodes = (results.get("startup") or {}).get("nodes") or {}
    limits: dict[int, float] = {8: 1000.0, 32: 4000.0}
    for size in (2, 8, 32):
        row = nodes.get(str(size))
        ready = row and row.get("ready_ms")
        bound = limits.get(size)
        verdict = "" if bound is None else _verdict(ready, _below(bound))
        out.append(Row(f"start-up, {size} workers to ready", f"{fmt_ms(ready)} ms",
                       "", "", f"< {bound / 1000:g} s" if bound else "", verdict))
    sc = results.get("scale")
    if sc:
        out.append(Row(f"{sc['workers']} workers: ready, stop, orphans after stop",
                       f"{fmt_ms(sc['ready_ms'])} ms, {fmt_ms(sc['stop_ms'])} ms, "
                       f"{sc['orphans']} of {sc['runtime_pids']} runtimes", "", "",
                       "0 orphans", "met" if sc["orphans"] == 0 and sc["runtime_pids"] else
                       "missed"))
    else:
        out.append(Row("100 workers: ready, stop, orphans after stop", "—", "", "", "0 orphans",
                       (results.get("scale_skipped") or "not measured")))

    fp = results.get("footprint") or {}
    node = fp.get("node") or {}
    out.append(Row("RSS per worker (adapter runtime) / per node (celery node process)",
                   f"{fmt_ms(node.get('worker_rss_mib'))} / {fmt_ms(node.get('node_rss_mib'))} MiB",
                   f"raw Celery worker {fmt_ms(fp.get('raw_celery_worker_mib'))} MiB; Ray actor "
                   f"{fmt_ms(fp.get('ray_actor_mib'))} MiB"))
    for key, what in (("snakepit", "fast lane"), ("snakepit_celery", "Celery lane")):
        mine = rt.get(key) or {}
        c, rc = mine.get("redis_commands_per_call"), (raw or {}).get("redis_commands_per_call")
        out.append(Row(f"Redis commands per `execute`, {what}", "—" if c is None else f"{c:.1f}",
                       f"raw Celery {'—' if rc is None else f'{rc:.1f}'}", fmt_ratio(ratio(c, rc))))

    uni, bidi = rt.get("mux_unary"), rt.get("mux_bidi")
    med, text = _ratio_mp(bidi, uni)
    verdict = ""
    if med is not None and uni and bidi:
        saved_ms = uni["median_ms"] - bidi["median_ms"]
        call = (rt.get("snakepit") or {}).get("median_ms")
        of_call = f", {saved_ms / call:.0%} of a fast-lane `execute`" if call else ""
        verdict = (f"bidi saves {1 - med:.0%} of the hop ({saved_ms:.2f} ms{of_call}): "
                   + ("over 20%" if 1 - med > 0.2 else "keep unary"))
    out.append(Row("node↔runtime: one bidi stream per worker (multiplexed by id) vs unary call",
                   f"bidi {_mp(bidi)}", f"unary {_mp(uni)}", text, BIDI_TARGET,
                   verdict))
    calls, unary = rt.get("call_socket"), rt.get("grpc_execute")
    if calls and unary:  # production: a node's call socket against the unary Execute
        med, text = _ratio_mp(calls, unary)
        saved = "" if med is None else f"the call socket saves {1 - med:.0%} of the hop"
        if med is not None and bidi:
            saved += f" (a bidi gRPC stream: {bidi['median_ms']:.2f} ms)"
        out.append(Row("node↔runtime in production: a worker's call socket (frames on a unix "
                       "socket) vs unary gRPC `Execute`", f"call socket {_mp(calls)}",
                       f"unary {_mp(unary)}", text, "", saved))
    return out


def markdown(results: dict[str, Any]) -> str:
    """The table, ready for the README, with the machine line under it."""
    lines = ["| measure | snakepit-tasks | reference, same run | ratio | target | |",
             "|---|---|---|---|---|---|"]
    for r in rows(results):
        lines.append(f"| {r.measure} | {r.snakepit} | {r.reference} | {r.ratio} | {r.target} "
                     f"| {r.verdict} |")
    return "\n".join(lines) + "\n\n" + machine_line(results) + "\n"


def machine_line(results: dict[str, Any]) -> str:
    m = results.get("machine") or {}
    pk = m.get("packages") or {}
    load = m.get("loadavg_start") or [0.0]
    end = m.get("loadavg_end") or [0.0]
    quick = " --quick" if results.get("quick") else ""
    return (
        f"Measured by `make bench` (`python -m bench.run_all{quick}`) on {m.get('nproc')} "
        f"CPU(s) ({m.get('cpu_model')}), {m.get('platform')}, "
        f"Python {m.get('python')}, Celery {pk.get('celery')}, grpcio {pk.get('grpcio')}, "
        f"Redis {m.get('redis_server')}, commit {m.get('commit')}, {str(m.get('date'))[:16]}; "
        f"load average {load[0]:.1f} at start, {end[0]:.1f} at end. Ratios are measured side "
        "by side in one run; compare them, not absolute times."
    )


def counts(results: dict[str, Any]) -> dict[str, int]:
    """How many targets were met and missed (for the run's last line)."""
    verdicts = [r.verdict for r in rows(results) if r.target and r.target != BIDI_TARGET]
    return {"met": verdicts.count("met"), "missed": verdicts.count("missed"),
            "targets": len(verdicts)}
