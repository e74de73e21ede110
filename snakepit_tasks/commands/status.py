"""``snakepit-tasks status``: every pool as Redis sees it now, as text or as JSON.

Per pool: its nodes (lease age, uptime, queue), their workers (busy, idle, tainted, calls
served), the calls waiting on both lanes (in the pool's queues, in each live node's, and in
each dead node's, with the fast-lane calls it had taken), the counters, the circuit breaker,
the sessions and the dead letters. Calls in flight are the nodes' live counts; the other
worker figures come from the nodes' leases, which a node republishes within moments of a
call starting or ending.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from .. import connections, dead_letters, keys, pool_state, session_store
from ..config import Settings, config_source
from ..connections import text
from ..resilience import HealthMonitor
from ..resilience.circuit_breaker import breaker_for

#: Sessions listed per pool in the text output (the JSON has them all).
SESSIONS_SHOWN = 10
#: Dead letters listed per pool with ``--dead-letters``.
DEAD_LETTERS_SHOWN = 100


def collect(settings: Settings, *, with_dead_letters: bool = False) -> dict[str, Any]:
    """The state of every configured or known pool; raises RedisUnavailable."""
    r = connections.redis_client(settings.redis_url)
    with connections.redis_errors_as_snakepit("reading the pools' state", settings.redis_url,
                                              outcome=""):
        r.ping()
        configured = {p.name: p for p in settings.pools}
        names = sorted(set(configured) | pool_state.known_pools(r))
        pools = [
            _pool(settings, r, name, name in configured, with_dead_letters) for name in names
        ]
    return {
        "configuration": config_source().describe(),
        "redis_url": connections.shown(settings.redis_url),
        "ok": all(p["up"] for p in pools if p["configured"]),
        "pools": pools,
    }


def _pool(
    settings: Settings, r: redis.Redis, pool: str, configured: bool, with_dead_letters: bool
) -> dict[str, Any]:
    now = time.time()
    nodes = pool_state.live_nodes(r, pool)
    live = {n["name"] for n in nodes}
    members = {text(m) for m in r.smembers(keys.pool_nodes(pool))}
    watched = {text(k) for k in r.hkeys(keys.dead_nodes(pool))}
    backlog = {text(k): int(v) for k, v in r.hgetall(keys.dead_backlog(pool)).items()}
    dead = sorted((members | watched | set(backlog)) - live)
    worker_ids = [w["id"] for n in nodes for w in n["workers"]]
    with r.pipeline(transaction=False) as pipe:
        for wid in worker_ids:
            pipe.exists(keys.taint(wid))
        tainted = {wid for wid, t in zip(worker_ids, pipe.execute(), strict=True) if t}
    pool_queue = pool_state.waiting(r, keys.pool_queue(pool), keys.fast_pool_queue(pool))
    node_reports = [_node(r, n, tainted, now) for n in nodes]
    dead_reports = [
        {"name": name, "queued": _node_queued(r, name) + int(r.llen(keys.fast_processing(name))),
         "taken_over_at_last_sweep": backlog.get(name)}
        for name in dead
    ]
    workers = [w for n in node_reports for w in n["workers"]]
    counters = pool_state.read_counters(r, pool)
    sessions = session_store.list_sessions(r, pool)
    config = next((p for p in settings.pools if p.name == pool), None)
    report: dict[str, Any] = {
        "name": pool,
        "configured": configured,
        "adapter": config.adapter if config else (nodes[0].get("adapter") if nodes else None),
        "up": bool(nodes),
        "nodes": node_reports,
        "dead_nodes": dead_reports,
        "workers": len(workers),
        "busy": sum(1 for w in workers if w["busy"]),
        "idle": sum(1 for w in workers if w["state"] == "ready" and not w["inflight"]),
        "tainted": sum(1 for w in workers if w["tainted"]),
        "queued": {
            "pool": pool_queue,
            "nodes": sum(n["queued"] for n in node_reports),
            "dead_nodes": sum(d["queued"] for d in dead_reports),
        },
        "counters": {name: counters.get(name, 0)
                     for name in ("requests", "errors", "queue_timeouts", "pool_saturated")},
        "circuit": (breaker_for(settings, pool, redis=r).state
                    if settings.circuit_breaker_enabled else "disabled"),
        "healthy": HealthMonitor(pool, redis=r, settings=settings).healthy(),
        "sessions": [
            {"session_id": s["session_id"], "worker": s.get("worker"),
             "last_used_ago_s": round(now - float(s.get("last_used", now)), 1)}
            for s in sessions
        ],
        "dead_letters": dead_letters.count(r, pool),
    }
    report["queued"]["total"] = sum(report["queued"].values())
    if with_dead_letters:
        report["dead_letter_entries"] = dead_letters.list_entries(r, pool, DEAD_LETTERS_SHOWN)
    return report


def _node(r: redis.Redis, node: dict[str, Any], tainted: set[str], now: float) -> dict[str, Any]:
    # Calls in flight per worker as the node counts them on the call path (live); the lease's
    # snapshot can be a moment behind.
    live = {text(k): int(v) for k, v in r.hgetall(keys.busy(node["name"])).items()}
    workers = []
    for w in node["workers"]:
        capacity = int(w.get("capacity", 1))
        inflight = max(0, live.get(w["id"], int(w.get("inflight", 0))))
        workers.append({
            "id": w["id"], "pid": w.get("pid"), "state": w.get("state"),
            "inflight": inflight, "capacity": capacity, "busy": inflight > 0,
            "tainted": w["id"] in tainted, "requests": int(w.get("requests", 0)),
        })
    return {
        "name": node["name"],
        "host": node.get("host"),
        "pid": _int(node.get("pid")),
        "run_id": node.get("run_id"),
        "lease_age_s": round(max(0.0, now - _float(node.get("heartbeat"), now)), 1),
        "uptime_s": round(max(0.0, now - _float(node.get("started_at"), now)), 1),
        "queued": _node_queued(r, node["name"]),
        "workers": workers,
    }


def _node_queued(r: redis.Redis, name: str) -> int:
    """Calls waiting in node ``name``'s own queues, both lanes."""
    return pool_state.waiting(r, keys.node_queue(name), keys.fast_node_queue(name))


def _float(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# -- output ----------------------------------------------------------------------------------
def as_json(report: dict[str, Any]) -> str:
    """The report as indented JSON."""
    return json.dumps(report, indent=2, default=str)


def as_text(report: dict[str, Any]) -> str:
    """The report for people: a line per pool, then its nodes, workers, queues, sessions."""
    lines = [f"configuration: {report['configuration']}", f"redis: {report['redis_url']}"]
    if not report["pools"]:
        lines.append("no pools: none is configured and no node has served one on this Redis")
    for p in report["pools"]:
        lines.append("")
        lines.extend(_pool_lines(p))
    return "\n".join(lines)


def _pool_lines(p: dict[str, Any]) -> list[str]:
    c, q = p["counters"], p["queued"]
    head = (
        f"pool {p['name']}: nodes={len(p['nodes'])} workers={p['workers']} busy={p['busy']} "
        f"idle={p['idle']} tainted={p['tainted']} queued={q['total']} "
        f"requests={c['requests']} errors={c['errors']} queue_timeouts={c['queue_timeouts']} "
        f"pool_saturated={c['pool_saturated']} circuit={p['circuit']} "
        f"sessions={len(p['sessions'])} dead_letters={p['dead_letters']}"
    )
    lines = [head]
    if p["adapter"]:
        lines.append(f"  adapter {p['adapter']}" + ("" if p["configured"] else
                                                   " (not in this configuration)"))
    if not p["up"] and p["configured"]:
        lines.append(f"  DOWN: no live node serves it; start one with "
                     f"`snakepit-tasks worker --pool {p['name']}`")
    elif not p["up"]:
        lines.append("  no live node (not in this configuration; a node served it on this "
                     "Redis before)")
    elif not p["healthy"]:
        lines.append("  UNWELL: its workers crashed health_monitor_max_crashes times within "
                     "health_monitor_crash_window_ms")
    if q["pool"]:
        lines.append(f"  pool queue: {q['pool']} call(s) waiting")
    for n in p["nodes"]:
        lines.append(
            f"  node {n['name']}  pid {n['pid']}  lease {n['lease_age_s']:.1f} s ago  "
            f"up {_duration(n['uptime_s'])}  run {n['run_id']}  queue {n['queued']}"
        )
        for w in n["workers"]:
            flags = "  tainted" if w["tainted"] else ""
            lines.append(
                f"    {w['id']:<40} pid={w['pid']} state={w['state']} "
                f"{'busy' if w['busy'] else 'idle'} inflight={w['inflight']}/{w['capacity']} "
                f"requests={w['requests']}{flags}"
            )
    for d in p["dead_nodes"]:
        took = d["taken_over_at_last_sweep"]
        lines.append(
            f"  dead node {d['name']}: queue {d['queued']}"
            + (f" (the janitor took over {took} message(s) at its last sweep)"
               if took is not None else " (the janitor takes over its queue)")
        )
    for s in p["sessions"][:SESSIONS_SHOWN]:
        lines.append(f"  session {s['session_id']}  worker {s['worker']}  "
                     f"last used {_duration(s['last_used_ago_s'])} ago")
    if len(p["sessions"]) > SESSIONS_SHOWN:
        lines.append(f"  ... and {len(p['sessions']) - SESSIONS_SHOWN} more session(s) "
                     "(--json lists them all)")
    for entry in p.get("dead_letter_entries", []):
        lines.append(
            f"  dead letter from {entry['queue']} (call {entry['call_id'] or '?'}, "
            f"{entry['size']} bytes, node {entry['node']}): {entry['reason']}\n"
            f"    {entry['preview']}"
        )
    return lines


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def drop_dead_letters(settings: Settings) -> list[tuple[str, int]]:
    """Remove every pool's dead letters; (pool, how many) for each pool."""
    r = connections.redis_client(settings.redis_url)
    with connections.redis_errors_as_snakepit("dropping dead letters", settings.redis_url,
                                              outcome=""):
        pools = sorted({p.name for p in settings.pools} | pool_state.known_pools(r))
        return [(pool, dead_letters.drop(r, pool)) for pool in pools]
