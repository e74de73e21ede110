"""Prometheus metrics: a live node serves /metrics on its loopback port and the counters move
with its calls, errors, crashes and restarts; gauges show workers, queues, circuit, sessions."""

from __future__ import annotations

import os
import signal
import socket
import urllib.request
from typing import Any

import pytest
from helpers import wait_until

import snakepit_tasks as sp
from snakepit_tasks import connections, errors, pool_state

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and set(labels.items()) <= set(ls))


def lease_port(n: Any) -> int:
    r = connections.redis_client(n.redis_url)
    [lease] = [x for x in pool_state.live_nodes(r, n.pool) if x["name"] == n.name]
    return int(lease["metrics_port"])


def test_a_live_node_serves_counters_that_move(node: Any) -> None:
    port = free_port()
    n = node(env={"SNAKEPIT_METRICS_PORT": str(port)})
    assert lease_port(n) == port
    before = scrape(port)
    assert value(before, "snakepit_calls_total", tool="ping") == 0
    assert value(before, "snakepit_workers", state="ready", pool=n.pool, node=n.name) == 1
    assert value(before, "snakepit_queue_depth", queue="pool") == 0
    assert ("snakepit_queue_depth", (("node", n.name), ("pool", n.pool),
                                     ("queue", "dead_nodes"))) in before
    assert value(before, "snakepit_circuit_state", pool=n.pool) == 0
    assert ("snakepit_sessions", (("node", n.name), ("pool", n.pool))) in before

    pid = sp.execute("ping", app=n.app)["pid"]
    for _ in range(2):
        sp.execute("ping", app=n.app)
    with pytest.raises(errors.AdapterError):
        sp.execute("fail", app=n.app)
    sp.execute_in_session("metrics-session", "ping", app=n.app)
    after = scrape(port)
    worker = n.worker_ids()[0]
    assert value(after, "snakepit_calls_total", tool="ping", worker=worker) == 4
    assert value(after, "snakepit_call_errors_total", tool="fail", error="AdapterError") == 1
    assert value(after, "snakepit_call_errors_total", tool="ping") == 0
    assert value(after, "snakepit_call_duration_seconds_count", tool="ping") == 4
    assert value(after, "snakepit_call_duration_seconds_sum", tool="ping") > 0
    assert value(after, "snakepit_session_binds_total", pool=n.pool) == 1
    assert value(after, "snakepit_sessions") >= 1
    assert value(after, "snakepit_workers_busy") == 0

    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: value(scrape(port), "snakepit_worker_restarts_total",
                             reason="crash") == 1, timeout=30, message="a counted restart")
    crashed = scrape(port)
    assert value(crashed, "snakepit_worker_crashes_total", worker=worker) == 1
    assert value(crashed, "snakepit_worker_taints_total", worker=worker) == 1
    assert value(crashed, "snakepit_workers_tainted") == 1


def test_metrics_are_off_by_default_and_a_taken_port_moves_on(node: Any) -> None:
    quiet = node()
    assert lease_port(quiet) == 0
    port = free_port()
    a = node(env={"SNAKEPIT_METRICS_PORT": str(port)})
    b = node(env={"SNAKEPIT_METRICS_PORT": str(port)})
    assert lease_port(a) == port and lease_port(b) > port
    assert value(scrape(lease_port(b)), "snakepit_workers", node=b.name) == 1
