"""The results as console tables and a JSON file (the one Markdown table: ``bench.table``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .stats import ratio
from .table import fmt_ms as _ms
from .table import fmt_rate as _rate
from .table import fmt_ratio as _x


def derive_ratios(results: dict[str, Any]) -> dict[str, Any]:
    """snakepit against raw Celery (and the gRPC floor), from the measured figures."""
    rt = results.get("round_trip", {})
    tp = results.get("throughput", {})
    sp, raw = rt.get("snakepit", {}), rt.get("raw_celery", {})
    grpc = rt.get("call_socket") or rt.get("grpc_execute", {})  # the hop a node makes
    out: dict[str, Any] = {
        "round_trip_median": ratio(sp.get("median_ms"), raw.get("median_ms")),
        "round_trip_p99": ratio(sp.get("p99_ms"), raw.get("p99_ms")),
        "throughput": ratio(
            tp.get("snakepit", {}).get("calls_per_s"), tp.get("raw_celery", {}).get("calls_per_s")
        ),
    }
    if sp.get("median_ms") is not None and raw.get("median_ms") is not None:
        extra = sp["median_ms"] - raw["median_ms"]
        out["snakepit_minus_raw_celery_median_ms"] = round(extra, 4)
        if grpc.get("median_ms") is not None:
            out["snakepit_minus_raw_celery_minus_grpc_median_ms"] = round(
                extra - grpc["median_ms"], 4
            )
    ses = rt.get("snakepit_session", {})
    if ses:
        out["session_vs_plain_median"] = ratio(ses.get("median_ms"), sp.get("median_ms"))
        out["session_vs_plain_p99"] = ratio(ses.get("p99_ms"), sp.get("p99_ms"))
        out["session_vs_raw_celery_median"] = ratio(ses.get("median_ms"), raw.get("median_ms"))
        out["session_vs_raw_celery_p99"] = ratio(ses.get("p99_ms"), raw.get("p99_ms"))
        if ses.get("median_ms") is not None and sp.get("median_ms") is not None:
            out["session_minus_plain_median_ms"] = round(ses["median_ms"] - sp["median_ms"], 4)
    st = results.get("streaming", {})
    stp = st.get("throughput", {})
    s_tp, g_tp = stp.get("snakepit", {}), stp.get("raw_grpc", {})
    if s_tp and g_tp:
        out["stream_throughput_vs_grpc"] = ratio(s_tp.get("chunks_per_s"), g_tp.get("chunks_per_s"))
    lat = st.get("latency", {})
    s_lat, g_lat, r_lat = lat.get("snakepit", {}), lat.get("raw_grpc", {}), lat.get("redis_stream")
    if s_lat and g_lat:
        out["stream_latency_vs_grpc_median"] = ratio(s_lat.get("median_ms"), g_lat.get("median_ms"))
        out["stream_latency_vs_grpc_p99"] = ratio(s_lat.get("p99_ms"), g_lat.get("p99_ms"))
        out["stream_first_chunk_vs_grpc"] = ratio(
            s_lat.get("first_chunk_median_ms"), g_lat.get("first_chunk_median_ms")
        )
        if r_lat and None not in (s_lat.get("median_ms"), g_lat.get("median_ms")):
            # What neither hop explains: the node's and the caller's thread hand-offs, decoding.
            out["stream_latency_minus_grpc_and_redis_hops_median_ms"] = round(
                s_lat["median_ms"] - g_lat["median_ms"] - r_lat["median_ms"], 4
            )
    return out


def text_report(results: dict[str, Any]) -> str:
    """The human-readable summary printed at the end of a run."""
    m = results["machine"]
    s = results["settings"]
    pk = m["packages"]
    lines = [
        "",
        f"snakepit-tasks benchmark{' (--quick)' if results['quick'] else ''} — "
        f"{m['nproc']} CPU(s) {m['cpu_model']}, Python {m['python']}, "
        f"celery {pk.get('celery')}, kombu {pk.get('kombu')}, grpcio {pk.get('grpcio')}, "
        f"redis-server {m['redis_server']} ({s['redis']})",
        f"load average {m['loadavg_start'][0]:.2f} at start, "
        f"{m.get('loadavg_end', [0.0])[0]:.2f} at end; {results['elapsed_s']:.0f} s in all",
        "",
    ]
    rt = results.get("round_trip")
    if rt:
        lines.append(
            f"Round trip, sequential calls ({s['calls']} per row, {s['rounds']} interleaved "
            f"rounds, after {s['warmup']} warm-up calls), ms:"
        )
        lines.append(
            f"  {'':44} {'median':>8} {'p90':>8} {'p99':>8} {'max':>8} {'redis cmds':>10}"
        )
        for row in rt.values():
            cmds = row.get("redis_commands_per_call")
            lines.append(
                f"  {row['label']:44} {_ms(row['median_ms']):>8} {_ms(row['p90_ms']):>8} "
                f"{_ms(row['p99_ms']):>8} {_ms(row['max_ms']):>8} "
                f"{'—' if cmds is None else f'{cmds:.1f}':>10}"
            )
        r = results["ratios"]
        lines.append(
            f"  {'snakepit / raw Celery':44} {_x(r['round_trip_median']):>8} {'':>8} "
            f"{_x(r['round_trip_p99']):>8}"
        )
        if "snakepit_minus_raw_celery_median_ms" in r:
            lines.append(
                f"  snakepit adds {r['snakepit_minus_raw_celery_median_ms']:.2f} ms to a Celery "
                "round trip (median)"
                + (
                    f"; {r['snakepit_minus_raw_celery_minus_grpc_median_ms']:.2f} ms of it is "
                    "not the gRPC hop"
                    if "snakepit_minus_raw_celery_minus_grpc_median_ms" in r
                    else ""
                )
            )
        if "session_vs_plain_median" in r:
            lines.append(
                f"  {'session / plain execute':44} {_x(r['session_vs_plain_median']):>8} "
                f"{'':>8} {_x(r['session_vs_plain_p99']):>8}"
            )
            lines.append(
                f"  {'session / raw Celery':44} {_x(r['session_vs_raw_celery_median']):>8} "
                f"{'':>8} {_x(r['session_vs_raw_celery_p99']):>8}"
            )
        ses = results.get("sessions")
        if ses:
            lines.append(f"  {_session_sanity(ses)}")
        lines.append("")
    tp = results.get("throughput")
    if tp:
        lines.append(
            f"Throughput: {s['throughput_calls']:,} calls fired, then all gathered "
            f"(median of {s['throughput_rounds']} round(s)), calls/s:"
        )
        lines.append(f"  {'':44} {'total':>8} {'sending':>8} {'procs':>8} {'redis cmds':>10}")
        for row in tp.values():
            cmds = row.get("redis_commands_per_call")
            lines.append(
                f"  {row['label']:44} {_rate(row['calls_per_s']):>8} "
                f"{_rate(row['send_calls_per_s']):>8} {row['processes_used']:>8} "
                f"{'—' if cmds is None else f'{cmds:.1f}':>10}"
            )
        lines.append(f"  {'snakepit / raw Celery':44} {_x(results['ratios']['throughput']):>8}")
        lines.append("")
    cc = results.get("concurrent")
    if cc:
        first = next(iter(cc.values()))
        lines.append(
            f"Throughput, {first['callers']} concurrent synchronous callers (threads), "
            f"{first['calls']:,} calls per round (median of {first['rounds']}), calls/s:"
        )
        for row in cc.values():
            cmds = row.get("redis_commands_per_call")
            lines.append(f"  {row['label']:44} {_rate(row['calls_per_s']):>8} "
                         f"{'—' if cmds is None else f'{cmds:.1f}':>10} redis cmds/call")
            roles = row.get("cpu_us_per_call") or {}
            if roles:
                parts = ", ".join(f"{role} {us:.0f}" for role, us in roles.items())
                lines.append(f"  {'':44} CPU µs per call: {parts}")
        lines.append("")
    fp = results.get("footprint")
    if fp:
        node = fp["node"]
        lines.append(
            f"Memory (VmRSS): node process {node['node_rss_mib']} MiB, adapter runtime "
            f"{node['worker_rss_mib']} MiB each ({node['workers']} workers, "
            f"{node['total_rss_mib']} MiB in all); raw Celery worker "
            f"{fp.get('raw_celery_worker_mib')} MiB; Ray actor process "
            f"{fp.get('ray_actor_mib') or '—'} MiB"
        )
        lines.append("")
    lines += _stream_lines(results)
    sc = results.get("scale")
    st = results.get("startup")
    if st:
        lines.append(
            f"Start-up of a node (median of {s['startup_repeats']}), ms from process start:"
        )
        lines.append(
            f"  {'workers':>8} {'ready':>8} {'1st call':>8} {'boot':>8} {'workers':>8} "
            f"{'stop':>8}"
        )
        for row in st["nodes"].values():
            lines.append(
                f"  {row['workers']:>8} {_ms(row['ready_ms']):>8} {_ms(row['first_call_ms']):>8} "
                f"{_ms(row['boot_ms']):>8} {_ms(row['workers_ms']):>8} {_ms(row['stop_ms']):>8}"
            )
        raw = st["raw_celery"]
        lines.append(
            f"  raw Celery worker (-P threads -c 2), process start to first answered call: "
            f"{_ms(raw['first_call_ms'])} ms (stop {_ms(raw['stop_ms'])} ms)"
        )
        if results.get("runtime_start_ms") is not None:
            lines.append(
                f"  one adapter runtime alone, spawn to serving: "
                f"{_ms(results['runtime_start_ms'])} ms"
            )
        lines.append(
            "  ready: all workers ready in the node's lease; 1st call: a ping answered; boot: "
            "to the node step; workers: boot to ready"
        )
        lines.append("")
    if sc:
        lines.append(
            f"A node of {sc['workers']} workers: ready in {_ms(sc['ready_ms'])} ms, stopped "
            f"(SIGTERM to exit) in {_ms(sc['stop_ms'])} ms; {sc['orphans']} of "
            f"{sc['runtime_pids']} runtime pids alive {sc['grace_s']:g} s after (orphans); "
            f"{sc.get('total_rss_mib')} MiB resident in all"
        )
        lines.append("")
    return "\n".join(lines)


def _session_sanity(ses: dict[str, Any]) -> str:
    ids = ", ".join(ses["worker_ids"]) or "none"
    plain = ", ".join(ses.get("plain_worker_ids", [])) or "none"
    verdict = "OK" if ses["workers_used"] == 1 and ses["worker_ids"] == [
        ses.get("bound_worker")
    ] else "NOT ONE WORKER"
    return (
        f"sessions: {ses['calls']:,} calls of one session ran on {ses['workers_used']} "
        f"worker(s) ({ids}; bound to {ses.get('bound_worker')}) of {ses['pool_workers']} — "
        f"{verdict}; plain execute calls ran on {plain}"
    )


def _stream_lines(results: dict[str, Any]) -> list[str]:
    st = results.get("streaming")
    if not st:
        return []
    s, r = results["settings"], results["ratios"]
    lines: list[str] = []
    tp = st.get("throughput")
    if tp:
        lines.append(
            f"Streaming throughput: one stream_count stream of {s['stream_chunks']:,} chunks "
            f"consumed by a callback (median of {s['stream_rounds']} round(s)):"
        )
        lines.append(f"  {'':44} {'chunks/s':>9} {'steady/s':>9}")
        for row in tp.values():
            lines.append(
                f"  {row['label']:44} {_rate(row['chunks_per_s']):>9} "
                f"{_rate(row['steady_chunks_per_s']):>9}"
            )
        lines.append(f"  {'snakepit / raw gRPC':44} {_x(r.get('stream_throughput_vs_grpc')):>9}")
        for key, roles in (st.get("cpu_us_per_chunk") or {}).items():
            if roles:
                parts = ", ".join(f"{role} {us:.0f}" for role, us in roles.items())
                lines.append(f"  CPU µs per chunk, {key}: {parts}")
        lines.append("")
    lat = st.get("latency")
    if lat:
        lines.append(
            f"Chunk latency, tool's yield → caller's callback ({s['latency_streams']} streams of "
            f"{s['latency_chunks']} chunks {s['latency_delay_ms']:g} ms apart x "
            f"{s['latency_rounds']} round(s)), ms; 1st chunk: call → first chunk in hand:"
        )
        lines.append(
            f"  {'':52} {'median':>8} {'p90':>8} {'p99':>8} {'max':>8} {'1st chunk':>9}"
        )
        for row in lat.values():
            lines.append(
                f"  {row['label']:52} {_ms(row['median_ms']):>8} {_ms(row['p90_ms']):>8} "
                f"{_ms(row['p99_ms']):>8} {_ms(row['max_ms']):>8} "
                f"{_ms(row.get('first_chunk_median_ms')):>9}"
            )
        lines.append(
            f"  {'snakepit / raw gRPC':52} {_x(r.get('stream_latency_vs_grpc_median')):>8} "
            f"{'':>8} {_x(r.get('stream_latency_vs_grpc_p99')):>8} {'':>8} "
            f"{_x(r.get('stream_first_chunk_vs_grpc')):>9}"
        )
        rest = r.get("stream_latency_minus_grpc_and_redis_hops_median_ms")
        if rest is not None:
            lines.append(
                f"  snakepit median − gRPC stream − Redis hop = {rest:.2f} ms (the node's and "
                "the caller's thread hand-offs, decoding)"
            )
        lines.append("")
    return lines


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
