"""snakepit_tasks.node.registry: the SQLite process registry and the orphan sweep.

The processes these tests start are real (short Python sleepers); every one is killed by pid
at teardown. A "dead node" is simulated by rewriting the recorded node identity in the file,
since the recording node is this test process, which is alive.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from spawned import Spawned

from snakepit_tasks.errors import ConfigurationError
from snakepit_tasks.node.registry import (
    ProcessRegistry,
    default_data_dir,
    registry_path,
)
from snakepit_tasks.processes import proc_stat, process_cmdline, process_start_time

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc"),
]

SLEEP = "import time; time.sleep(60)"
# Ignores SIGTERM, starts a grandchild in its own process group, prints the grandchild's pid.
PARENT = (
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print(p.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def uid() -> str:
    return uuid.uuid4().hex[:7]


class Procs(Spawned):
    """:class:`Spawned`, with Python sleepers in their own session by default."""

    def sleeper(self, *args: str, code: str = SLEEP, **kw: Any) -> subprocess.Popen[bytes]:
        kw.setdefault("start_new_session", True)
        return self.python(code, *args, **kw)


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def reg(tmp_path: Path) -> ProcessRegistry:
    return ProcessRegistry(tmp_path, f"inst-{uid()}", "tok")


def orphan(registry: ProcessRegistry, *, node_pid: int = 0, node_start: int = -1,
           **fields: int) -> None:
    """Make every record (and run) of ``registry`` look written by another node, dead unless
    ``node_pid``/``node_start`` name a live process; ``fields`` overwrite columns of the
    process rows (e.g. ``start_time``)."""
    with sqlite3.connect(registry.path) as conn:
        for table in ("processes", "runs"):
            conn.execute(f"UPDATE {table} SET node_pid = ?, node_start_time = ?",
                         (node_pid, node_start))
        for column, value in fields.items():
            conn.execute(f"UPDATE processes SET {column} = ?", (value,))
    conn.close()


def runs_in(registry: ProcessRegistry) -> list[str]:
    with sqlite3.connect(registry.path) as conn:
        rows = [r[0] for r in conn.execute("SELECT run_id FROM runs")]
    conn.close()
    return rows


def ended(proc: subprocess.Popen[bytes]) -> bool:
    """Whether ``proc`` has ended (reaping it)."""
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        return False
    return True


# -- helpers ---------------------------------------------------------------------------------
def test_process_start_time_of_self_and_of_the_gone() -> None:
    with open("/proc/self/stat") as f:
        raw = f.read()
    expected = int(raw[raw.rfind(")") + 2 :].split()[19])
    assert process_start_time(os.getpid()) == expected > 0
    assert process_start_time(0) is None
    assert process_start_time(2**22 + 12345) is None  # above pid_max
    assert "--run-id" not in (process_cmdline(os.getpid()) or [])


def test_process_start_time_of_a_zombie_is_none(procs: Procs) -> None:
    proc = procs.sleeper(start_new_session=False)
    assert process_start_time(proc.pid) is not None
    proc.kill()
    # Not reaped yet: a zombie has ended, so it has no start time to match.
    for _ in range(500):
        st = proc_stat(proc.pid)
        if st is not None and st.state == "Z":
            break
        threading.Event().wait(0.01)
    assert process_start_time(proc.pid) is None
    proc.wait(5)


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "snakepit-tasks"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/dir")  # the spec says: ignore it
    assert default_data_dir() == Path.home() / ".local" / "state" / "snakepit-tasks"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_data_dir() == Path.home() / ".local" / "state" / "snakepit-tasks"


def test_empty_data_dir_uses_the_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    r = ProcessRegistry("", "", "")
    assert r.path == tmp_path / "snakepit-tasks" / "process_registry_default__default.sqlite3"
    assert r.path.exists()


def test_registry_path_is_sanitized_and_distinct(tmp_path: Path) -> None:
    assert registry_path(tmp_path, "", "").name == "process_registry_default__default.sqlite3"
    assert registry_path(tmp_path, "web-1", "abc").name == "process_registry_web-1__abc.sqlite3"
    odd = registry_path(tmp_path, "../../etc/x", "a b/c")
    assert odd.parent == tmp_path
    assert "/" not in odd.name[len("process_registry_"):]
    names = {registry_path(tmp_path, n, t) for n, t in
             [("a/b", "t"), ("a_b", "t"), ("a", "t"), ("a", "u"), ("", "t"), ("default", "t")]}
    assert len(names) == 6 - 1  # "" and "default" both mean the default instance


def test_unwritable_data_dir_is_a_configuration_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigurationError, match="data_dir"):
        ProcessRegistry(blocker / "sub", "x", "y")


def test_nodes_setting_up_one_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    # Two nodes of one instance starting together on a fresh machine both create the file:
    # SQLite refuses a journal-mode change at once (no busy wait) while the other holds it.
    script = (
        "import sys, time\n"
        "from snakepit_tasks.node.registry import ProcessRegistry\n"
        "start = float(sys.argv[2])\n"
        "while time.time() < start:\n"
        "    pass\n"
        "ProcessRegistry(sys.argv[1], 'same', 'token')\n"
    )
    for round_ in range(8):
        data_dir = tmp_path / f"round{round_}"
        start = time.time() + 1.0
        procs = [subprocess.Popen([sys.executable, "-c", script, str(data_dir), str(start)],
                                  stderr=subprocess.PIPE) for _ in range(4)]
        try:
            outcomes = [(p.wait(timeout=60), p.stderr.read() if p.stderr else b"") for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        assert all(rc == 0 for rc, _ in outcomes), [err.decode()[-400:] for _, err in outcomes]


def test_corrupt_file_is_moved_aside(tmp_path: Path) -> None:
    path = registry_path(tmp_path, "c", "t")
    path.write_bytes(b"this is not an sqlite database" * 100)
    r = ProcessRegistry(tmp_path, "c", "t")
    assert r.records() == []
    assert any(p.name.startswith(path.name + ".corrupt-") for p in tmp_path.iterdir())


# -- record / forget / leftovers -------------------------------------------------------------
def test_record_forget_records(reg: ProcessRegistry, procs: Procs) -> None:
    run = uid()
    proc = procs.sleeper("--run-id", run, "--instance", reg.instance_name)
    assert reg.record(proc.pid, run_id=run, worker_id="n@h/0", node_name="n@h")
    [rec] = reg.records()
    assert rec.pid == proc.pid
    assert rec.start_time == process_start_time(proc.pid)
    assert rec.run_id == run
    assert rec.instance_name == reg.instance_name
    assert rec.worker_id == "n@h/0" and rec.node_name == "n@h"
    assert rec.node_pid == os.getpid()
    assert rec.node_start_time == process_start_time(os.getpid())
    assert rec.cmdline[-4:] == ("--run-id", run, "--instance", reg.instance_name)
    assert str(proc.pid) in rec.describe()
    assert runs_in(reg) == [run]
    with sqlite3.connect(reg.path) as conn:  # the token is stored, not exposed
        assert conn.execute("SELECT instance_token FROM processes").fetchone()[0] == "tok"
    conn.close()
    reg.forget(proc.pid)
    assert reg.records() == []
    reg.forget(proc.pid)  # twice is fine


def test_record_of_a_gone_process_records_nothing(reg: ProcessRegistry, procs: Procs) -> None:
    proc = procs.sleeper()
    proc.kill()
    proc.wait(5)
    assert not reg.record(proc.pid, run_id="r", worker_id="w", node_name="n")
    assert reg.records() == []


def test_leftovers(reg: ProcessRegistry, procs: Procs) -> None:
    run = uid()
    proc = procs.sleeper("--run-id", run, "--instance", reg.instance_name)
    reg.record(proc.pid, run_id=run, worker_id="w", node_name="n")
    assert reg.leftovers() == []  # its node (this process) is alive
    orphan(reg)
    assert [r.pid for r in reg.leftovers()] == [proc.pid]
    assert reg.leftovers(current_run_id=run) == []
    assert proc.poll() is None  # leftovers() signals nothing


def test_end_run_drops_ended_processes_and_the_run(reg: ProcessRegistry, procs: Procs) -> None:
    run = uid()
    a, b = procs.sleeper("--run-id", run), procs.sleeper("--run-id", run)
    for p in (a, b):
        reg.record(p.pid, run_id=run, worker_id=str(p.pid), node_name="n")
    a.kill()
    a.wait(5)
    reg.end_run(run)
    assert [r.pid for r in reg.records()] == [b.pid]  # still running: kept for a sweep
    assert runs_in(reg) == [run]
    b.kill()
    b.wait(5)
    reg.end_run(run)
    assert reg.records() == [] and runs_in(reg) == []


# -- sweep -----------------------------------------------------------------------------------
def test_sweep_kills_a_leftover_and_its_group(reg: ProcessRegistry, procs: Procs) -> None:
    run = uid()
    proc = procs.sleeper("--run-id", run, "--instance", reg.instance_name, code=PARENT,
                       stdout=subprocess.PIPE)
    assert proc.stdout is not None
    grandchild = int(proc.stdout.readline())
    procs.adopt(grandchild)
    reg.record(proc.pid, run_id=run, worker_id="w", node_name="n")
    orphan(reg)
    killed = reg.sweep(uid(), grace_s=0.3)  # it ignores SIGTERM: SIGKILL after the grace
    assert killed == [proc.pid]
    assert ended(proc) and proc.returncode == -signal.SIGKILL
    assert process_start_time(grandchild) is None  # same group, killed with it
    assert reg.records() == [] and runs_in(reg) == []


def test_reused_pid_is_never_signalled(reg: ProcessRegistry, procs: Procs) -> None:
    """A record whose pid runs with another start time is a reused pid: left alone. The child
    carries no --instance, so the unrecorded-process scan cannot pick it either."""
    run = uid()
    proc = procs.sleeper("--run-id", run)
    start = process_start_time(proc.pid)
    assert start is not None
    reg.record(proc.pid, run_id=run, worker_id="w", node_name="n")
    orphan(reg, start_time=start - 1)
    assert reg.sweep(uid(), grace_s=0.2) == []
    assert proc.poll() is None
    assert reg.records() == []  # the record no longer names a running process
    # The same process with the right start time is a leftover.
    reg.record(proc.pid, run_id=run, worker_id="w", node_name="n")
    orphan(reg)
    assert reg.sweep(uid(), grace_s=2.0) == [proc.pid]
    assert ended(proc) and proc.returncode == -signal.SIGTERM


def test_pid_without_its_run_id_in_the_cmdline_is_not_signalled(
    reg: ProcessRegistry, procs: Procs
) -> None:
    proc = procs.sleeper("--run-id", "someother")
    reg.record(proc.pid, run_id=uid(), worker_id="w", node_name="n")
    orphan(reg)
    assert reg.sweep(uid(), grace_s=0.2) == []
    assert proc.poll() is None
    assert [r.pid for r in reg.records()] == [proc.pid]  # still that process: kept


def test_current_run_is_kept(reg: ProcessRegistry, procs: Procs) -> None:
    run = uid()
    proc = procs.sleeper("--run-id", run, "--instance", reg.instance_name)
    reg.record(proc.pid, run_id=run, worker_id="w", node_name="n")
    orphan(reg)
    assert reg.sweep(run, grace_s=0.2) == []
    assert proc.poll() is None
    assert [r.pid for r in reg.records()] == [proc.pid]
    assert runs_in(reg) == [run]


def test_rows_of_vanished_pids_are_removed(reg: ProcessRegistry, procs: Procs) -> None:
    old, current = uid(), uid()
    a = procs.sleeper("--run-id", old)
    b = procs.sleeper("--run-id", current)
    reg.record(a.pid, run_id=old, worker_id="a", node_name="n")
    reg.record(b.pid, run_id=current, worker_id="b", node_name="n")
    for p in (a, b):
        p.kill()
        p.wait(5)
    orphan(reg)
    assert reg.sweep(current) == []
    assert reg.records() == []
    assert runs_in(reg) == [current]  # the old run is finished; the current one is not


def test_live_node_of_the_same_instance_is_protected(reg: ProcessRegistry, procs: Procs) -> None:
    run = uid()
    node = procs.sleeper()  # stands in for another live node of this instance
    node_start = process_start_time(node.pid)
    assert node_start is not None
    worker = procs.sleeper("--run-id", run, "--instance", reg.instance_name)
    reg.record(worker.pid, run_id=run, worker_id="w", node_name="other")
    orphan(reg, node_pid=node.pid, node_start=node_start)
    assert reg.leftovers() == []
    assert reg.sweep(uid(), grace_s=0.2) == []
    assert worker.poll() is None
    # Same node pid with another start time: that node is gone (its pid reused).
    orphan(reg, node_pid=node.pid, node_start=node_start + 1)
    assert [r.pid for r in reg.leftovers()] == [worker.pid]
    orphan(reg, node_pid=node.pid, node_start=node_start)
    node.kill()
    node.wait(5)
    assert reg.sweep(uid(), grace_s=2.0) == [worker.pid]
    assert ended(worker)


def test_instances_never_see_each_other(tmp_path: Path, procs: Procs) -> None:
    name = f"inst-{uid()}"
    a = ProcessRegistry(tmp_path, name, "t1")
    b = ProcessRegistry(tmp_path, name, "t2")  # same name, other token
    c = ProcessRegistry(tmp_path, f"{name}x", "t1")  # other name, same token
    assert len({a.path, b.path, c.path}) == 3
    run = uid()
    proc = procs.sleeper("--run-id", run, "--instance", name)
    a.record(proc.pid, run_id=run, worker_id="w", node_name="n")
    orphan(a)
    for other in (b, c):
        assert other.records() == [] and other.leftovers() == []
        assert other.sweep(uid(), grace_s=0.2) == []
        assert proc.poll() is None
        other.forget(proc.pid)
    assert [r.pid for r in a.records()] == [proc.pid]
    assert a.sweep(uid(), grace_s=2.0) == [proc.pid]
    assert ended(proc)


def test_unrecorded_process_of_a_dead_run_is_found_by_its_cmdline(
    reg: ProcessRegistry, procs: Procs
) -> None:
    """The node died between spawn and record: the run is known, the pid is not."""
    run = uid()
    reg.begin_run(run, "n@h")
    ours = procs.sleeper("--run-id", run, "--instance", reg.instance_name)
    other_instance = procs.sleeper("--run-id", run, "--instance", reg.instance_name + "z")
    no_instance = procs.sleeper("--run-id", run)
    orphan(reg)
    assert reg.leftovers() == []  # only recorded processes are listed
    assert reg.sweep(uid(), grace_s=2.0) == [ours.pid]
    assert ended(ours)
    assert other_instance.poll() is None and no_instance.poll() is None
    assert runs_in(reg) == []


def test_scan_skips_processes_older_than_their_node(reg: ProcessRegistry, procs: Procs) -> None:
    run = uid()
    reg.begin_run(run, "n@h")
    proc = procs.sleeper("--run-id", run, "--instance", reg.instance_name)
    start = process_start_time(proc.pid)
    assert start is not None
    orphan(reg, node_start=start + 1)  # its "node" started after it: not one of its runtimes
    assert reg.sweep(uid(), grace_s=0.2) == []
    assert proc.poll() is None


def test_concurrent_threads_and_processes(reg: ProcessRegistry, procs: Procs) -> None:
    """Threads of this process and a second process write the same file at once."""
    worker = procs.sleeper("--run-id", "x")
    script = (
        "import sys\n"
        "from snakepit_tasks.node.registry import ProcessRegistry\n"
        "r = ProcessRegistry(sys.argv[1], sys.argv[2], 'tok')\n"
        "pid = int(sys.argv[3])\n"
        "for i in range(100):\n"
        "    assert r.record(pid, run_id='x', worker_id=str(i), node_name='other')\n"
        "    r.forget(pid)\n"
        "print('ok', flush=True)\n"
    )
    other = procs.sleeper(str(reg.data_dir), reg.instance_name, str(worker.pid), code=script,
                        stdout=subprocess.PIPE)
    errors: list[BaseException] = []

    def hammer(n: int) -> None:
        try:
            for i in range(50):
                assert reg.record(os.getpid(), run_id="y", worker_id=f"{n}/{i}", node_name="n")
                reg.records()
                reg.forget(os.getpid())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    out, _ = other.communicate(timeout=60)
    assert errors == []
    assert other.returncode == 0 and out.strip() == b"ok"
    assert reg.records() == []
    with sqlite3.connect(reg.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_scan_never_looks_for_a_run_id_a_live_node_uses(
    reg: ProcessRegistry, procs: Procs
) -> None:
    """Two nodes used the same run id (a fixed id, or a collision); one of them is alive."""
    run = uid()
    reg.begin_run(run, "alive@h")  # this process: alive
    with sqlite3.connect(reg.path) as conn:
        conn.execute(
            "INSERT INTO runs (run_id, instance_name, instance_token, node_name, node_pid,"
            " node_start_time, started_at) VALUES (?, ?, 'tok', 'dead@h', 0, -1, 0)",
            (run, reg.instance_name),
        )
    conn.close()
    proc = procs.sleeper("--run-id", run, "--instance", reg.instance_name)
    assert reg.sweep(uid(), grace_s=0.2) == []
    assert proc.poll() is None


def test_empty_run_id_is_never_looked_for(reg: ProcessRegistry, procs: Procs) -> None:
    reg.begin_run("", "n@h")
    orphan(reg)
    proc = procs.sleeper("--run-id", "", "--instance", reg.instance_name)
    assert reg.sweep(uid(), grace_s=0.2) == []
    assert proc.poll() is None
    assert runs_in(reg) == []  # the dead node's run is forgotten all the same


def test_version_1_file_is_upgraded(tmp_path: Path) -> None:
    path = registry_path(tmp_path, "v", "t")
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, instance_name TEXT NOT NULL,"
                     " instance_token TEXT NOT NULL, node_name TEXT NOT NULL,"
                     " node_pid INTEGER NOT NULL, node_start_time INTEGER NOT NULL,"
                     " started_at REAL NOT NULL)")
    conn.close()
    r = ProcessRegistry(tmp_path, "v", "t")
    r.begin_run("same", "a")
    with sqlite3.connect(path) as conn:  # two nodes may note the same run id now
        conn.execute("INSERT INTO runs VALUES ('same', 'v', 't', 'b', 1, 2, 0)")
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()
    assert runs_in(r) == ["same", "same"]
    ProcessRegistry(tmp_path, "v", "t")  # opening again keeps the rows
    assert len(runs_in(r)) == 2
