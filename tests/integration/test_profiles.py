"""Worker profiles: capacity is real end to end; thread-safety is required; BLAS threads."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from helpers import REPO, assert_served_by, pool_table, subprocess_env, unique_pool, wait_until

import snakepit_tasks as sp
from snakepit_tasks import connections, keys

pytestmark = pytest.mark.timeout(120)


def test_two_thread_workers_of_four_run_eight_calls_at_once(node):
    n = node(pool_size=2, worker_profile="thread", threads_per_worker=4)
    r = connections.redis_client(n.app.snakepit_settings.redis_url)
    peak = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            busy = sum(int(v) for v in r.hvals(keys.busy(n.name)))
            peak[0] = max(peak[0], busy)
            done.wait(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    calls = [sp.execute_async("sleep", {"seconds": 2}, app=n.app) for _ in range(8)]
    try:
        results = [c.get(timeout=60) for c in calls]
    finally:
        done.set()
        watcher.join()
    assert peak[0] == 8  # all eight were in flight together
    assert {res["worker_id"] for res in results} == set(n.worker_ids())
    for res in results:
        assert_served_by(n, res)


def test_a_thread_pool_refuses_an_adapter_that_is_not_thread_safe(redis_url, pids):
    pool = unique_pool()
    table = pool_table(pool, adapter="adapters.template:TemplateAdapter",
                       worker_profile="thread", threads_per_worker=2)
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "snakepit_tasks.node.entry", "worker",
         "-n", f"{pool}@itest", "--snakepit-pool", pool, "-l", "warning",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=REPO, env=subprocess_env(redis_url, [table]), capture_output=True, text=True,
        timeout=90,
    )
    assert proc.returncode != 0
    assert "thread-safe" in proc.stderr + proc.stdout


def test_process_workers_start_with_one_blas_thread(node):
    n = node()
    (pid,) = n.worker_pids()
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    for name in (b"OMP_NUM_THREADS", b"OPENBLAS_NUM_THREADS", b"MKL_NUM_THREADS"):
        assert env[name] == b"1"


def test_a_pool_can_raise_its_thread_count(node):
    n = node(adapter_env={"OMP_NUM_THREADS": "4"})
    (pid,) = n.worker_pids()
    wait_until(lambda: n.worker_pids(), timeout=10)
    with open(f"/proc/{pid}/environ", "rb") as f:
        assert b"OMP_NUM_THREADS=4" in f.read().split(b"\0")
