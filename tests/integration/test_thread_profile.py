"""The thread profile: one runtime serves threads_per_worker calls at once; an adapter that is
not thread-safe is refused at start."""

from __future__ import annotations

import subprocess
from collections import Counter

import pytest
from helpers import assert_served_by, wait_until

import snakepit_tasks as sp
from snakepit_tasks import connections, keys

pytestmark = pytest.mark.timeout(120)


def test_eight_calls_run_at_once_on_two_workers_of_four_threads(node):
    n = node(pool_size=2, worker_profile="thread", threads_per_worker=4)
    stats = sp.get_stats(n.pool, app=n.app)
    assert stats["workers"] == 2 and stats["capacity"] == 8
    r = connections.redis_client(n.redis_url)

    def in_flight() -> int:
        return sum(int(v) for v in r.hvals(keys.busy(n.name)))

    peak = 0

    def all_eight() -> bool:
        nonlocal peak
        peak = max(peak, in_flight())
        return peak == 8

    results = [sp.execute_async("sleep", {"seconds": 2.5}, app=n.app, timeout=60) for _ in range(8)]
    wait_until(
        all_eight,
        timeout=30,
        interval=0.02,
        message=lambda: f"8 calls in flight at once (peak {peak})",
    )
    values = [res.get(timeout=60) for res in results]

    pids = Counter(v["pid"] for v in values)
    assert set(pids) == set(n.worker_pids()), pids
    assert sorted(pids.values()) == [4, 4], "8 calls in flight on 2×4 threads: 4 each"
    for v in values:
        assert v["slept"] == 2.5
        assert_served_by(n, v)
    wait_until(lambda: in_flight() == 0, timeout=15, message="the slots to be released")


def test_adapter_that_is_not_thread_safe_is_refused_by_the_thread_profile(node):
    n = node(
        pool_size=1,
        adapter="adapters.template:TemplateAdapter",
        worker_profile="thread",
        threads_per_worker=4,
        wait=False,
    )
    try:
        rc = n.proc.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the node kept running with a non-thread-safe adapter:\n{n.output()}")
    output = n.output()
    assert rc != 0, output
    assert "thread-safe" in output, output
    assert "adapters.template:TemplateAdapter" in output
    assert n.workers() == [], "the node must never advertise workers"
