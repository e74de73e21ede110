"""First contact: the README's quick start as pasted, and what status, doctor, setup and
gen adapter tell a new user, through the real stack (Redis, nodes, adapter processes)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    REPO,
    cli_command,
    pool_table,
    run_cli,
    subprocess_env,
    terminate,
    unique_pool,
    wait_until,
)

import snakepit_tasks as sp
from snakepit_tasks import connections, errors, keys, kombu_redis
from snakepit_tasks.commands import setup
from snakepit_tasks.embedded_redis import free_port

pytestmark = pytest.mark.timeout(240)


def start(args: list[str], env: dict[str, str], pids, log: Path, cwd: Path = REPO):
    """Start a long-running command (tracked), its output going to ``log``."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    pids.track(proc.pid)
    return proc


# -- the quick start -----------------------------------------------------------------------
def test_the_quick_start_works_as_pasted(pids, tmp_path):
    """README: a Redis (the embedded one), `snakepit-tasks worker` with no configuration, then
    examples/quickstart.py. Only the port differs from the README (6379 may be taken here)."""
    port = free_port()
    env = subprocess_env(SNAKEPIT_REDIS_URL=f"redis://127.0.0.1:{port}/0")
    redis_log, worker_log = tmp_path / "redis.log", tmp_path / "worker.log"
    redis_proc = start([sys.executable, "-m", "snakepit_tasks.embedded_redis", "--port",
                        str(port)], env, pids, redis_log)
    wait_until(lambda: "embedded redis-server on" in redis_log.read_text(), timeout=30,
               message=lambda: redis_log.read_text())
    worker = start([*cli_command(), "worker"], env, pids, worker_log)
    try:
        wait_until(lambda: run_cli(["status"], env, pids).returncode == 0, timeout=60,
                   interval=0.5, message=lambda: worker_log.read_text())
        done = subprocess.run([sys.executable, "examples/quickstart.py"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.split("\n") == ["42", "1", "chunk 1", "chunk 2", "chunk 3", "0.2", ""]
        assert done.stderr == ""
    finally:
        assert terminate(worker, 60) == 0, worker_log.read_text()
        assert terminate(redis_proc, 30) == 0, redis_log.read_text()
    out = worker_log.read_text()
    assert "Warm shutdown" not in out and ":**@" not in out and "SecurityWarning" not in out


def test_the_embedded_redis_refuses_a_port_in_use(redis_url, pids):
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    done = subprocess.run([sys.executable, "-m", "snakepit_tasks.embedded_redis", "--port",
                           str(port)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and "already listens" in done.stderr


# -- status --------------------------------------------------------------------------------
def test_status_shows_nodes_workers_sessions_and_fresh_counts(node, redis_url, pids):
    # A lease republished only every minute: fresh figures come from publishing on change.
    slow_lease = {"SNAKEPIT_NODE_LEASE_INTERVAL_MS": "60000",
                  "SNAKEPIT_NODE_LEASE_TTL_MS": "120000"}
    n = node(pool_size=2, env=slow_lease)
    sid = f"s-{unique_pool()}"
    for _ in range(3):
        sp.execute("ping", pool=n.pool, app=n.app)
    sp.execute_in_session(sid, "remember", {"key": "k", "value": 1}, pool=n.pool, app=n.app)
    env = subprocess_env(redis_url, [n.table])

    def report() -> dict:
        done = run_cli(["status", "--json"], env, pids)
        assert done.returncode == 0, done.stdout + done.stderr
        found = json.loads(done.stdout)
        return next(p for p in found["pools"] if p["name"] == n.pool)

    pool = wait_until(lambda: (p := report()) and sum(
        w["requests"] for node_ in p["nodes"] for w in node_["workers"]) == 4 and p,
        timeout=20, message="per-worker request counts without waiting for the lease interval")
    assert pool["configured"] and pool["up"] and pool["workers"] == 2
    assert pool["idle"] == 2 and pool["busy"] == 0 and pool["tainted"] == 0
    assert pool["counters"]["requests"] == 4 and pool["circuit"] == "closed"
    [node_] = pool["nodes"]
    assert node_["name"] == n.name and node_["pid"] == n.pid and node_["lease_age_s"] < 120
    assert sorted(w["pid"] for w in node_["workers"]) == sorted(n.worker_pids())
    assert [s["session_id"] for s in pool["sessions"]] == [sid]
    assert pool["queued"] == {"pool": 0, "nodes": 0, "dead_nodes": 0, "total": 0}

    # A call in flight shows as busy at once (the node's live count), in text too.
    running = sp.execute_async("sleep", {"seconds": 3}, pool=n.pool, app=n.app)
    wait_until(lambda: report()["busy"] == 1, timeout=20, message="a busy worker")
    text = run_cli(["status"], env, pids).stdout
    assert re.search(rf"pool {n.pool}: nodes=1 workers=2 busy=1 idle=1 tainted=0 ", text), text
    assert f"session {sid}" in text and f"node {n.name}  pid {n.pid}  lease " in text
    assert "configuration: no configuration file" in text
    assert f"redis: {redis_url}" in text
    assert running.get(timeout=30)["slept"] == 3


def test_status_lists_a_dead_nodes_queue(node, redis_url, pids):
    first = node()
    second = node(pool=first.pool, name=f"{first.pool}@other")
    first.child_pids()
    os.kill(first.pid, signal.SIGKILL)
    first.proc.wait(30)
    env = subprocess_env(redis_url, [first.table])

    def dead_nodes() -> list:
        done = run_cli(["status", "--json"], env, pids)
        pool = next(p for p in json.loads(done.stdout)["pools"] if p["name"] == first.pool)
        return pool["dead_nodes"]

    [dead] = wait_until(dead_nodes, timeout=30, message="the killed node among the dead")
    assert dead["name"] == first.name and dead["queued"] == 0
    text = run_cli(["status"], env, pids).stdout
    assert f"dead node {first.name}: queue 0" in text
    assert f"node {second.name}" in text


def test_status_with_redis_down_prints_one_line_and_exits_69(pids):
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    done = run_cli(["status"], subprocess_env(url), pids)
    assert done.returncode == 69, done.stdout + done.stderr
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("error: RedisUnavailable: Redis at redis://:<REDACTED>@127.0.0.1:")
    assert "hunter2" not in line and "Traceback" not in line


def pool_config(tmp_path: Path, pool: dict) -> Path:
    """A configuration file naming ``pool`` (a :func:`pool_table`) and nothing else."""
    cfg = tmp_path / "snakepit.toml"
    cfg.write_text(f'[[pools]]\nname = "{pool["name"]}"\nadapter = "{pool["adapter"]}"\n')
    return cfg


def test_status_without_a_node_is_down_not_healthy(redis_url, pids, tmp_path):
    pool = pool_table(unique_pool())
    cfg = pool_config(tmp_path, pool)
    done = run_cli(["status"], subprocess_env(redis_url, SNAKEPIT_CONFIG=str(cfg)), pids)
    assert done.returncode == 1
    assert f"configuration: file {cfg}" in done.stdout
    assert f"DOWN: no live node serves it; start one with `snakepit-tasks worker --pool " \
           f"{pool['name']}`" in done.stdout
    assert "healthy=True" not in done.stdout


def test_status_counts_the_calls_waiting_on_both_lanes(redis_url, pids, tmp_path):
    pool = pool_table(unique_pool())
    cfg = pool_config(tmp_path, pool)
    r = connections.redis_client(redis_url)
    fast, celery = keys.fast_pool_queue(pool["name"]), keys.pool_queue(pool["name"])
    try:
        r.lpush(fast, b"one", b"two")  # counted, not looked into
        r.lpush(kombu_redis.queue_lists(celery)[0], b"three")
        done = run_cli(["status", "--json"], subprocess_env(redis_url, SNAKEPIT_CONFIG=str(cfg)),
                       pids)
        [found] = [p for p in json.loads(done.stdout)["pools"] if p["name"] == pool["name"]]
        assert found["queued"] == {"pool": 3, "nodes": 0, "dead_nodes": 0, "total": 3}
    finally:
        r.delete(fast, *kombu_redis.queue_lists(celery))


# -- doctor --------------------------------------------------------------------------------
def test_doctor_names_the_file_it_read_and_shows_the_hardware(redis_url, pids, tmp_path):
    cfg = tmp_path / "snakepit.toml"
    cfg.write_text(f'redis_url = "{redis_url}"\n[[pools]]\nname = "{unique_pool()}"\n')
    done = run_cli(["doctor"], subprocess_env(SNAKEPIT_CONFIG=str(cfg)), pids)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"[ok]   configuration valid: file {cfg};" in done.stdout
    assert "; 1 pool(s): " in done.stdout
    assert f"[ok]   redis reachable: {redis_url}" in done.stdout
    assert "[ok]   broker: the same Redis" in done.stdout
    assert "[ok]   data dir writable" in done.stdout
    assert "[ok]   import celery: celery 5." in done.stdout
    assert "hardware (snakepit_tasks.hardware):\n  platform: " in done.stdout
    assert "  cpu: " in done.stdout and "all checks passed" in done.stdout


def test_doctor_gives_a_fix_for_each_failure(pids):
    url = f"redis://127.0.0.1:{free_port()}/0"
    env = subprocess_env(url, [pool_table(unique_pool(), adapter="not_importable_here:Thing")])
    done = run_cli(["doctor"], env, pids)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    failed = [i for i, line in enumerate(lines) if line.startswith("[FAIL]")]
    assert len(failed) == 2, done.stdout
    for i in failed:
        assert lines[i + 1].strip().startswith("fix: "), done.stdout
    assert "redis reachable" in lines[failed[0]] and "start Redis" in lines[failed[0] + 1]
    assert "ModuleNotFoundError" in lines[failed[1]]
    assert "PYTHONPATH" in lines[failed[1] + 1] and "adapter_env" in lines[failed[1] + 1]
    assert "2 check(s) failed" in done.stdout


def test_doctor_with_a_broken_configuration_says_where(pids, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[[pool]]\nname = 'x'\n")
    done = run_cli(["doctor"], subprocess_env(SNAKEPIT_CONFIG=str(cfg)), pids)
    assert done.returncode == 1
    assert "[FAIL] configuration valid" in done.stdout
    assert str(cfg) in done.stdout and "did you mean [[pools]]?" in done.stdout


# -- setup ---------------------------------------------------------------------------------
def test_setup_plans_the_extras_and_checks_the_stubs(redis_url, pids):
    pytest.importorskip("grpc_tools")
    env = subprocess_env(redis_url, SNAKEPIT_TASK_EVENTS="true")  # wants Flower
    done = run_cli(["setup", "--dry-run", "--extra", "embedded", "--extra", "arrow"], env, pids)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "[ok]      extra embedded: installed (asked for with --extra)" in out
    declared = setup.declared_extras()
    for name, why in (("flower", "task_events = true"), ("arrow", "asked for with --extra")):
        if setup.installed(setup.EXTRAS[name]):
            assert f"[ok]      extra {name}" in out
        elif name in declared:
            assert f"[install] extra {name}: " in out and why in out
            assert re.search(rf"\$ .*pip install .*\[.*{name}.*\]", out), out
        else:
            assert f"[planned] extra {name}: " in out and "not available in this version" in out
    assert "dry run: nothing installed" in out

    done = run_cli(["setup"], subprocess_env(redis_url), pids)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gRPC stubs: up to date" in done.stdout
    assert "this configuration needs none" in done.stdout or "[ok]" in done.stdout

    done = run_cli(["setup", "--extra", "no-such-extra"], subprocess_env(redis_url), pids)
    assert done.returncode == 2 and "unknown extra(s) no-such-extra" in done.stderr


# -- gen adapter ---------------------------------------------------------------------------
def test_a_generated_adapter_passes_its_own_test_and_doctor(redis_url, pids, tmp_path):
    folder = tmp_path / "my_project"
    done = run_cli(["gen", "adapter", "word_tools", "--dir", str(folder)], subprocess_env(), pids)
    assert done.returncode == 0, done.stderr
    assert (folder / "word_tools.py").is_file() and (folder / "test_word_tools.py").is_file()
    assert f"export PYTHONPATH={folder}" in done.stdout

    # Its own test, run from elsewhere: it imports the module, starts a pool, calls the tools.
    env = subprocess_env(redis_url)
    test = subprocess.Popen(
        [sys.executable, "-m", "pytest", str(folder / "test_word_tools.py"), "-q",
         "-p", "no:cacheprovider"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids.track(test.pid)
    out, _ = test.communicate(timeout=180)
    assert test.returncode == 0, out
    assert "3 passed" in out

    # doctor from another folder: not importable until PYTHONPATH says where it is.
    table = pool_table("word_tools", adapter="word_tools:WordToolsAdapter")
    failing = run_cli(["doctor"], subprocess_env(redis_url, [table]), pids)
    assert failing.returncode == 1 and "ModuleNotFoundError" in failing.stdout
    fixed = run_cli(["doctor"], subprocess_env(redis_url, [table], PYTHONPATH=str(folder)), pids)
    assert fixed.returncode == 0, fixed.stdout


# -- the demo and the messages -------------------------------------------------------------
def test_the_demo_shows_a_session_and_a_stream_and_nothing_of_celery(redis_url, pids):
    done = run_cli(["demo"], subprocess_env(redis_url), pids)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "'blue' from demo@" in done.stdout
    assert "chunk 3  →  {'i': 3, 'of': 3}" in done.stdout
    both = done.stdout + done.stderr
    for celery_noise in ("Warm shutdown", "SecurityWarning", "[tasks]", "-------------- ",
                         "stream reader", "Traceback", "celery@"):
        assert celery_noise not in both, both
    assert done.stderr == "", done.stderr


def test_a_timed_out_call_names_its_limit_and_the_restart(node):
    n = node(pool_size=1)
    before = n.worker_pids()
    with pytest.raises(errors.ExecutionTimeout) as info:
        sp.execute("spin", {"seconds": 30}, timeout=1, app=n.app)
    assert "timeout of 1 s" in str(info.value)
    assert "was killed and is being restarted" in str(info.value)
    wait_until(lambda: n.worker_pids() and n.worker_pids() != before, timeout=30,
               message="the timed-out worker replaced")
    assert sp.execute("ping", app=n.app)["pid"] not in before


def test_errors_name_the_redis_they_looked_at(redis_url, make_app):
    app = make_app(pool_table(unique_pool()))
    with pytest.raises(errors.NoWorkersAvailable, match=re.escape(f"on Redis {redis_url}")):
        sp.execute("ping", app=app)
    down = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    app = sp.configure(redis_url=down, pools=[pool_table(unique_pool())])  # reset by make_app
    with pytest.raises(errors.RedisUnavailable) as info:
        sp.execute("ping", app=app)
    assert "redis://:<REDACTED>@127.0.0.1" in str(info.value)
    assert "hunter2" not in str(info.value)

