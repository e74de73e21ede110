"""Celery beat calling a tool on a pool: runs on a schedule, one active beat among several
(celery-redbeat's Redis lock), and a standby that takes over when the active beat dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    NodeHandle,
    ProcessTracker,
    assert_served_by,
    cli_command,
    subprocess_env,
    terminate,
    wait_until,
)

from snakepit_tasks import caller, connections, jobs, keys

pytestmark = pytest.mark.timeout(240)

LOCK_TIMEOUT = 3  # seconds: how long a dead beat's lock blocks the standby
SENT = "Sending due task"
ACQUIRED = "beat: Acquired lock"


class Beat:
    """One beat process and its log."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc, self.log = proc, log

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def sends(self) -> int:
        return self.text().count(SENT)

    def active(self) -> bool:
        return ACQUIRED in self.text()


def write_schedule(tmp_path: Path, pool: str) -> Path:
    """A beat schedule module: ping on ``pool`` every second, each run recorded as a job."""
    path = tmp_path / f"schedule_{pool}.py"
    path.write_text(
        f"beat_max_loop_interval = 1\n"
        f"redbeat_lock_timeout = {LOCK_TIMEOUT}\n"
        f"redbeat_key_prefix = {keys.beat_prefix() + pool + ':'!r}\n"  # this test's own
        "beat_schedule = {\n"
        "    'ping-every-second': {\n"
        "        'task': 'snakepit.execute',\n"
        "        'schedule': 1.0,\n"
        f"        'kwargs': {{'command': 'ping', 'args': {{}}, 'pool': {pool!r}, 'timeout': 30}},\n"
        f"        'options': {{'job': {pool!r}}},\n"
        "    },\n"
        "}\n"
    )
    return path


def start_beat(handle: NodeHandle, schedule: Path, pids: ProcessTracker, tmp_path: Path,
               name: str, plain: bool = False) -> Beat:
    """``snakepit-tasks beat --schedule FILE``, or the plain ``celery ... beat`` line."""
    env = subprocess_env(handle.redis_url, [handle.table])
    if plain:
        env["PYTHONPATH"] = os.pathsep.join([str(schedule.parent), env.get("PYTHONPATH", "")])
        cmd = [sys.executable, "-m", "celery", "-A", "snakepit_tasks.node.entry", "--config",
               schedule.stem, "beat", "-S", "redbeat.RedBeatScheduler", "-l", "info"]
    else:
        cmd = [*cli_command(), "beat", "--schedule", str(schedule)]
    log = tmp_path / f"beat-{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
    pids.track(proc.pid)
    return Beat(proc, log)


def forget_schedule(redis_url: str, pool: str) -> None:
    r = connections.redis_client(redis_url)
    for key in r.scan_iter(match=keys.beat_prefix() + pool + ":*"):
        r.delete(key)


@pytest.fixture
def beats(redis_url):
    started: list[tuple[Beat, str]] = []
    yield started
    for beat, _ in started:
        terminate(beat.proc, 15)
    for pool in {p for _, p in started}:
        forget_schedule(redis_url, pool)


def test_beat_runs_the_tool_on_a_worker_every_second(node, pids, tmp_path, beats):
    handle = node(pool_size=1)
    beat = start_beat(handle, write_schedule(tmp_path, handle.pool), pids, tmp_path, "one")
    beats.append((beat, handle.pool))
    ids = wait_until(lambda: (r := jobs.runs(handle.pool, app=handle.app)) and len(r) >= 2
                     and r, timeout=60, message=lambda: f"two runs by beat:\n{beat.text()}")
    for task_id in ids[-2:]:
        result = caller.get_result(task_id, app=handle.app).get(timeout=30)
        assert result["status"] == "pong"
        assert_served_by(handle, result)
    assert beat.active() and beat.sends() >= 2


def test_two_beats_started_at_once_send_each_run_once(node, pids, tmp_path, beats):
    handle = node(pool_size=1)
    schedule = write_schedule(tmp_path, handle.pool)
    a = start_beat(handle, schedule, pids, tmp_path, "a")
    b = start_beat(handle, schedule, pids, tmp_path, "b", plain=True)
    beats.extend([(a, handle.pool), (b, handle.pool)])
    wait_until(lambda: a.sends() + b.sends() >= 3, timeout=60,
               message=lambda: f"three runs:\n--- a\n{a.text()}\n--- b\n{b.text()}")
    assert sorted([a.active(), b.active()]) == [False, True], "exactly one beat holds the lock"
    # Stop both before counting, the standby first (so it never gets the lock released).
    for beat in sorted((a, b), key=Beat.active):
        beat.proc.send_signal(signal.SIGTERM)
        beat.proc.wait(30)
    assert min(a.sends(), b.sends()) == 0, "the standby beat sent calls too"
    sent = a.sends() + b.sends()
    assert len(jobs.runs(handle.pool, app=handle.app)) == sent
    wait_until(lambda: caller.get_stats(handle.pool, app=handle.app)["requests"] == sent,
               timeout=30, message="every sent call ran once")


def test_killing_the_active_beat_lets_the_standby_take_over(node, pids, tmp_path, beats):
    handle = node(pool_size=1)
    schedule = write_schedule(tmp_path, handle.pool)
    first = start_beat(handle, schedule, pids, tmp_path, "first")
    beats.append((first, handle.pool))
    wait_until(lambda: first.active() and first.sends() >= 1, timeout=60,
               message=lambda: f"the first beat running:\n{first.text()}")
    standby = start_beat(handle, schedule, pids, tmp_path, "standby")
    beats.append((standby, handle.pool))
    wait_until(lambda: "beat: Starting" in standby.text(), timeout=60,
               message=lambda: f"the standby started:\n{standby.text()}")
    assert not standby.active()
    first.proc.kill()
    first.proc.wait(10)
    # Its lock expires LOCK_TIMEOUT seconds after its last tick; the standby retries every
    # second (beat_max_loop_interval). Generous bound: no wall-clock assertion.
    wait_until(lambda: standby.active() and standby.sends() >= 2, timeout=LOCK_TIMEOUT + 60,
               message=lambda: f"the standby taking over:\n{standby.text()}")
    runs_before = len(jobs.runs(handle.pool, app=handle.app))
    wait_until(lambda: len(jobs.runs(handle.pool, app=handle.app)) > runs_before, timeout=30,
               message="runs go on after the take-over")
