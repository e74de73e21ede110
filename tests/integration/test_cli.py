"""snakepit_tasks.cli: the ``snakepit-tasks`` command against a real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import pytest
from helpers import (
    REPO,
    WHOAMI,
    WHOAMI_ENV,
    children,
    cli_command,
    cmdline,
    descendants,
    pool_table,
    run_cli,
    subprocess_env,
    unique_pool,
    wait_until,
)

from snakepit_tasks import caller, connections, errors, pool_state

pytestmark = pytest.mark.timeout(180)


def published_pids(redis_url: str, pool: str) -> dict[str, int]:
    """worker id -> pid of the ready workers of ``pool`` published in Redis."""
    r = connections.redis_client(redis_url)
    return {
        w["id"]: int(w["pid"])
        for n in pool_state.live_nodes(r, pool)
        for w in n["workers"]
        if w["state"] == "ready"
    }


def check_served(result: dict[str, Any], root: int, redis_url: str, pool: str) -> None:
    pid = int(result["pid"])
    assert pid != os.getpid()
    assert pid in descendants(root), "the tool did not run below the worker command"
    assert "snakepit_tasks.bridge.runtime" in cmdline(pid)
    assert published_pids(redis_url, pool).get(result["worker_id"]) == pid


def test_worker_command_serves_two_pools_and_stops_cleanly(redis_url, make_app, pids, tmp_path):
    a = pool_table(unique_pool(), pool_size=2)
    b = pool_table(unique_pool(), adapter=WHOAMI, pool_size=1, adapter_env=WHOAMI_ENV)
    env = subprocess_env(redis_url, [a, b])
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        sup = subprocess.Popen(
            [*cli_command(), "worker", "--pool", a["name"], "--pool", b["name"], "-l", "warning"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    pids.track(sup.pid)
    try:
        app = make_app(a, b)
        for pool, size in ((a["name"], 2), (b["name"], 1)):
            wait_until(lambda p=pool, s=size: len(published_pids(redis_url, p)) == s,
                       timeout=60, message=lambda p=pool: f"workers of {p}: {log.read_text()}")
        ids_a = caller.list_workers(a["name"], app=app)
        ids_b = caller.list_workers(b["name"], app=app)
        assert len(ids_a) == 2 and all(i.startswith(f"{a['name']}@") for i in ids_a)
        assert len(ids_b) == 1 and all(i.startswith(f"{b['name']}@") for i in ids_b)

        pong = caller.execute("ping", pool=a["name"], app=app)
        check_served(pong, sup.pid, redis_url, a["name"])
        me = caller.execute("whoami", pool=b["name"], app=app)
        assert me["adapter"] == "whoami"
        check_served(me, sup.pid, redis_url, b["name"])
        pids.sample()
        assert len(descendants(sup.pid)) >= 2 + 3  # two nodes, three runtimes
    finally:
        sup.send_signal(signal.SIGTERM)
        try:
            rc = sup.wait(60)
        except subprocess.TimeoutExpired:
            sup.kill()
            sup.wait(10)
            pytest.fail(f"the worker command ignored SIGTERM:\n{log.read_text()}")
    assert rc == 0, log.read_text()
    # the leases are withdrawn with the nodes: calls fail fast instead of queueing
    with pytest.raises(errors.NoWorkersAvailable):
        caller.execute("ping", pool=a["name"], app=make_app(a, b))


def test_demo_against_the_test_redis(redis_url, pids):
    done = run_cli(["demo"], subprocess_env(redis_url), pids)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pong" in done.stdout
    assert f"using Redis at {redis_url}" in done.stdout
    assert "node stopped" in done.stdout
    assert len(pids.seen) >= 4, "demo should have run a worker command, a node and runtimes"


def test_demo_with_its_own_embedded_redis(pids):
    done = run_cli(["demo"], subprocess_env(), pids)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pong" in done.stdout
    assert "embedded redis-server started" in done.stdout
    assert "embedded redis-server stopped" in done.stdout
    started = [cmd for _, cmd in pids.seen.values() if "redis-server" in cmd]
    assert started, "the embedded redis-server was not seen"
    # pids fixture teardown asserts it (and everything else) is gone


def test_status_shows_the_pools_workers(node, redis_url, pids):
    n = node(pool_size=2)
    done = run_cli(["status"], subprocess_env(redis_url, [n.table]), pids)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"pool {n.pool}: nodes=1 workers=2" in done.stdout
    for wid, pid in published_pids(redis_url, n.pool).items():
        assert wid in done.stdout and f"pid={pid}" in done.stdout


def test_status_fails_for_a_configured_pool_without_node(redis_url, pids):
    pool = pool_table(unique_pool())
    done = run_cli(["status"], subprocess_env(redis_url, [pool]), pids)
    assert done.returncode == 1
    assert f"pool {pool['name']}: nodes=0 workers=0" in done.stdout


def test_doctor_with_a_good_config(redis_url, pids):
    env = subprocess_env(redis_url, [pool_table(unique_pool())])
    done = run_cli(["doctor"], env, pids)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[FAIL]" not in done.stdout
    assert "[ok]   redis reachable" in done.stdout
    assert "adapters.showcase:ShowcaseAdapter imports" in done.stdout


def test_doctor_prints_the_hardware_and_checks_pool_requirements(redis_url, pids):
    good = pool_table(unique_pool(), requires=["cpu"], device="auto")
    done = run_cli(["doctor"], subprocess_env(redis_url, [good]), pids)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hardware: Linux" in done.stdout and "cores" in done.stdout
    assert f"pool {good['name']}: this host has cpu, auto" in done.stdout
    gpu = pool_table(unique_pool(), requires=["cuda"])
    done = run_cli(["doctor"], subprocess_env(redis_url, [gpu]), pids)
    assert done.returncode == 1
    assert f"[FAIL] pool {gpu['name']}: this host has cuda" in done.stdout
    assert f"pool {gpu['name']!r} requires cuda" in done.stdout


def test_doctor_reports_a_broken_adapter(redis_url, pids):
    env = subprocess_env(redis_url, [pool_table(unique_pool(), adapter="no_such_module:Nope")])
    done = run_cli(["doctor"], env, pids)
    assert done.returncode == 1
    assert "[FAIL]" in done.stdout and "no_such_module" in done.stdout


def test_doctor_uses_the_pools_adapter_env(redis_url, pids):
    env = subprocess_env(
        redis_url, [pool_table(unique_pool(), adapter=WHOAMI, adapter_env=WHOAMI_ENV)]
    )
    done = run_cli(["doctor"], env, pids)
    assert done.returncode == 0, done.stdout


def test_worker_with_an_unimportable_adapter_fails_once_with_its_exit_code(redis_url, pids):
    """An import error fails the same way every time: no retries, one clear message."""
    pool = unique_pool()
    env = subprocess_env(redis_url, [pool_table(pool, adapter="no_such_module:Nope")])
    started = time.monotonic()
    done = subprocess.run([*cli_command(), "worker", "--pool", pool, "-l", "warning"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 78, out
    assert out.count("ModuleNotFoundError") >= 1 and "not restarting" in out, out
    assert "starting it again" not in out, out
    assert time.monotonic() - started < 60


def test_worker_restarts_a_node_that_crashed_after_it_served(redis_url, make_app, pids, tmp_path):
    pool = pool_table(unique_pool(), pool_size=1)
    env = subprocess_env(redis_url, [pool])
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        sup = subprocess.Popen([*cli_command(), "worker", "--pool", pool["name"], "-l", "warning"],
                               cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                               stderr=subprocess.STDOUT)
    pids.track(sup.pid)
    try:
        app = make_app(pool)
        wait_until(lambda: published_pids(redis_url, pool["name"]), timeout=60,
                   message=lambda: log.read_text())
        first = caller.execute("ping", pool=pool["name"], app=app, timeout=60)
        node_pid = next(p for p in children(sup.pid) if "celery" in cmdline(p))
        os.kill(node_pid, signal.SIGKILL)
        wait_until(lambda: "crashed with exit code" in log.read_text(), timeout=30,
                   message=lambda: log.read_text())

        def served_by_new_node() -> bool:
            try:
                return caller.execute("ping", pool=pool["name"], app=app, timeout=10)["pid"] != (
                    first["pid"])
            except errors.SnakepitError:
                return False

        wait_until(served_by_new_node, timeout=60, message=lambda: log.read_text())
    finally:
        sup.send_signal(signal.SIGTERM)
        sup.wait(60)
