"""snakepit_tasks.processes: /proc identity, parent-death signals, SIGTERM-grace-SIGKILL.

The processes these tests start are real (``sleep`` and small Python scripts); every one is
killed by pid at teardown if it still runs (children by their Popen, others by identity).
"""

from __future__ import annotations

import dataclasses
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from spawned import Spawned

from snakepit_tasks import processes
from snakepit_tasks.processes import ProcessIdentity, ProcStat

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not processes.has_proc(), reason="needs Linux /proc"),
]

REPO = Path(__file__).resolve().parents[2]
SLEEP = "import time; time.sleep(60)"
# Ignores SIGTERM, then says so.
IGNORE_TERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)
# Starts a grandchild that ignores SIGTERM (SIG_IGN survives exec) and prints its pid; with
# "ignore-term" it keeps ignoring SIGTERM itself, else it restores the default first.
GROUP_LEADER = (
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "p = subprocess.Popen(['sleep', '60'])\n"
    "if 'ignore-term' not in sys.argv:\n"
    "    signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
    "print(p.pid, flush=True)\n"
    "time.sleep(60)\n"
)
# Arms its parent-death signal (SIGTERM, as a node does), reports its pid and the result.
ARMED = (
    "import os, signal, time\n"
    "from snakepit_tasks import processes\n"
    "print(os.getpid(), processes.set_parent_death_signal(signal.SIGTERM), flush=True)\n"
    "time.sleep(60)\n"
)
# An intermediate parent: one child arms itself, one (`sleep`) is armed by preexec_fn with
# SIGKILL (as a runtime is); reports both pids, then waits to be killed.
INTERMEDIATE = (
    "import signal, subprocess, sys, time\n"
    "from snakepit_tasks import processes\n"
    f"armed = subprocess.Popen([sys.executable, '-c', {ARMED!r}], stdout=subprocess.PIPE)\n"
    "print(armed.stdout.readline().decode().strip(), flush=True)\n"
    "pre = subprocess.Popen(['sleep', '60'],\n"
    "                       preexec_fn=processes.preexec_parent_death(signal.SIGKILL))\n"
    "print(pre.pid, flush=True)\n"
    "time.sleep(60)\n"
)
# A child that watches its parent; prints its pid, then "fired N" when the parent is gone.
WATCHER = (
    "import os, time\n"
    "from snakepit_tasks import processes\n"
    "fired = []\n"
    "def gone():\n"
    "    fired.append(1)\n"
    "    print('fired', len(fired), flush=True)\n"
    "    time.sleep(0.3)\n"
    "    os._exit(0)\n"
    "processes.watch_parent(os.getppid(), gone, interval=0.05)\n"
    "print(os.getpid(), flush=True)\n"
    "time.sleep(60)\n"
)
WATCHER_PARENT = (
    "import subprocess, sys, time\n"
    f"subprocess.Popen([sys.executable, '-c', {WATCHER!r}])\n"
    "time.sleep(60)\n"
)


@pytest.fixture
def procs() -> Iterator[Spawned]:
    p = Spawned()
    try:
        yield p
    finally:
        p.close()


def read_line(stream: IO[bytes] | None, timeout: float = 20.0) -> str:
    assert stream is not None
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no line within the timeout"
    return stream.readline().decode().strip()


def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def gone(ident: ProcessIdentity) -> Callable[[], bool]:
    return lambda: not ident.is_running()


needs_sleep = pytest.mark.skipif(shutil.which("sleep") is None, reason="needs sleep(1)")


# -- /proc -----------------------------------------------------------------------------------
def test_identity_of_self() -> None:
    me = ProcessIdentity.of(os.getpid())
    assert me is not None
    with open("/proc/self/stat") as f:
        raw = f.read()
    assert me.start_time == int(raw[raw.rfind(")") + 2 :].split()[19]) > 0
    assert me.cmdline == tuple(processes.process_cmdline(os.getpid()) or ()) != ()
    assert me.is_running()
    assert processes.process_uid(os.getpid()) == os.getuid()
    assert processes.process_group(os.getpid()) == os.getpgrp()
    assert os.getpid() in processes.group_members(os.getpgrp())
    assert os.getpid() in set(processes.all_pids())


def test_identity_of_a_dead_pid_and_of_nonsense(procs: Spawned) -> None:
    proc = procs.python(SLEEP)
    ident = ProcessIdentity.of(proc.pid)
    assert ident is not None and ident.is_running()
    proc.kill()
    # Not reaped yet: a zombie has ended.
    assert eventually(lambda: (processes.proc_stat(proc.pid) or ProcStat("?", 0, 0)).ended)
    assert ProcessIdentity.of(proc.pid) is None and not ident.is_running()
    proc.wait(5)
    assert ProcessIdentity.of(proc.pid) is None
    for pid in (0, -1, 2**22 + 12345):
        assert ProcessIdentity.of(pid) is None
        assert processes.proc_stat(pid) is None


def test_pid_reuse_is_detected_by_the_start_time(procs: Spawned) -> None:
    proc = procs.python(SLEEP)
    ident = ProcessIdentity.of(proc.pid)
    assert ident is not None
    other = dataclasses.replace(ident, start_time=ident.start_time - 1)  # "an earlier owner"
    assert not other.is_running()
    assert not processes.send(other, signal.SIGTERM)
    assert processes.terminate(other, 0.2) is None
    assert not processes.kill(other)
    assert proc.poll() is None  # never signalled
    assert ident.is_running()


def test_stat_is_parsed_around_an_odd_command_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processes, "_PROC", str(tmp_path))
    (tmp_path / "4242").mkdir()
    # comm "a) S 1 2 (b" holds spaces and parentheses; field 22 (starttime) is 98765.
    rest = ["S", "1", "777", "4242", "0", "-1", *["0"] * 9, "20", "0", "1", "0", "98765", "7"]
    (tmp_path / "4242" / "stat").write_text(f"4242 (a) S 1 2 (b) {' '.join(rest)}\n")
    (tmp_path / "4242" / "cmdline").write_bytes(b"prog\0an arg\0")
    assert processes.proc_stat(4242) == ProcStat("S", 777, 98765)
    assert ProcessIdentity.of(4242) == ProcessIdentity(4242, 98765, ("prog", "an arg"))
    (tmp_path / "4242" / "stat").write_text(f"4242 (a) S 1 2 (b) Z {' '.join(rest[1:])}\n")
    assert processes.process_start_time(4242) is None  # a zombie has no start time to match
    assert ProcessIdentity.of(4242) is None
    (tmp_path / "4242" / "stat").write_text("4242 (truncated")
    assert processes.proc_stat(4242) is None


REWRITE = (
    "import os, sys\n"
    "from snakepit_tasks import processes\n"
    "print(processes.set_cmdline(['prog', '--worker-id', 'w/1']),"
    " processes.set_cmdline(['x' * 10_000]), flush=True)\n"
    "sys.stdin.readline()\n"
)


def test_a_process_rewrites_its_command_line_within_the_room_it_has() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", REWRITE, "room " * 40], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().split() == ["True", "False"]
        # What /proc shows: the new arguments; the padding (NULs) is not an argument.
        assert processes.process_cmdline(proc.pid) == ["prog", "--worker-id", "w/1"]
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            assert f.read().startswith(b"prog\0--worker-id\0w/1\0\0")
    finally:
        proc.kill()
        proc.communicate()


# -- stopping --------------------------------------------------------------------------------
def test_terminate_a_child_that_stops_on_sigterm(procs: Spawned) -> None:
    proc = procs.python(SLEEP)
    started = time.monotonic()
    assert processes.terminate(proc, 10.0) == -signal.SIGTERM
    assert time.monotonic() - started < 5.0  # no need to wait the grace out


def test_terminate_kills_a_child_that_ignores_sigterm_after_the_grace(procs: Spawned) -> None:
    proc = procs.python(IGNORE_TERM, stdout=subprocess.PIPE)
    assert read_line(proc.stdout) == "ready"
    started = time.monotonic()
    assert processes.terminate(proc, 0.5) == -signal.SIGKILL
    assert time.monotonic() - started >= 0.45


def test_an_ended_child_is_left_alone_and_its_code_returned(procs: Spawned) -> None:
    proc = procs.python("raise SystemExit(3)")
    proc.wait(20)
    [ending] = processes.terminate_all([proc], 1.0)
    assert ending == processes.Ending(proc.pid, 3, killed=False, survived=False)
    assert not processes.send(proc, signal.SIGTERM)


@needs_sleep
def test_group_terminate_kills_the_grandchildren(procs: Spawned) -> None:
    leader = procs.python(GROUP_LEADER, "ignore-term", stdout=subprocess.PIPE,
                          start_new_session=True)
    grandchild = procs.adopt(int(read_line(leader.stdout)))
    assert processes.terminate(leader, 0.3, group=True) == -signal.SIGKILL
    assert eventually(gone(grandchild))


@needs_sleep
def test_group_is_killed_after_its_leader_has_ended(procs: Spawned) -> None:
    """The leader stops on SIGTERM at once; its child ignores SIGTERM and gets SIGKILL."""
    leader = procs.python(GROUP_LEADER, stdout=subprocess.PIPE, start_new_session=True)
    grandchild = procs.adopt(int(read_line(leader.stdout)))
    started = time.monotonic()
    [ending] = processes.terminate_all([leader], 20.0, group=True)
    assert ending.returncode == -signal.SIGTERM and not ending.killed
    assert time.monotonic() - started < 10.0  # the leader's end cuts the grace short
    assert eventually(gone(grandchild))


@needs_sleep
def test_group_kill_is_immediate(procs: Spawned) -> None:
    leader = procs.python(GROUP_LEADER, "ignore-term", stdout=subprocess.PIPE,
                          start_new_session=True)
    grandchild = procs.adopt(int(read_line(leader.stdout)))
    assert processes.kill(leader, group=True)
    assert leader.wait(10) == -signal.SIGKILL
    assert eventually(gone(grandchild))


def test_group_true_for_a_process_that_leads_no_group_signals_it_alone(procs: Spawned) -> None:
    proc = procs.python(SLEEP)  # in this process's group
    assert processes.terminate(proc, 5.0, group=True) == -signal.SIGTERM


def test_terminate_all_waits_one_grace_for_all(procs: Spawned) -> None:
    children = [procs.python(IGNORE_TERM, stdout=subprocess.PIPE) for _ in range(5)]
    for child in children:
        assert read_line(child.stdout) == "ready"
    grace = 1.0
    started = time.monotonic()
    endings = processes.terminate_all(children, grace)
    elapsed = time.monotonic() - started
    assert grace * 0.9 <= elapsed < grace * 3  # one after the other would take 5 × grace
    assert [e.pid for e in endings] == [c.pid for c in children]
    assert all(e.killed and not e.survived and e.returncode == -signal.SIGKILL
               for e in endings)


@needs_sleep
def test_terminate_a_bare_pid_that_is_not_a_child(procs: Spawned) -> None:
    """The grandchild's parent never reaps it: once signalled it is a zombie, which counts
    as ended."""
    parent = procs.python(
        "import subprocess, time\n"
        "print(subprocess.Popen(['sleep', '60']).pid, flush=True)\n"
        "time.sleep(60)\n",
        stdout=subprocess.PIPE,
    )
    pid = int(read_line(parent.stdout))
    ident = procs.adopt(pid)
    started = time.monotonic()
    assert processes.terminate(pid, 10.0) is None  # not our child: no exit code
    assert time.monotonic() - started < 5.0
    assert not ident.is_running()
    assert processes.terminate(pid, 10.0) is None  # ended already: nothing to do


def test_nothing_is_signalled_for_pid_zero_or_below() -> None:
    for pid in (0, -1):
        assert not processes.send(pid, 0)
        assert not processes.send(ProcessIdentity(pid, 1), 0, group=True)


# -- dying with the parent -------------------------------------------------------------------
@needs_sleep
def test_children_die_with_their_parent(procs: Spawned) -> None:
    parent = procs.python(INTERMEDIATE, stdout=subprocess.PIPE)
    armed_pid, armed_ok = read_line(parent.stdout).split()
    assert armed_ok == "True"
    armed = procs.adopt(int(armed_pid))
    preexec = procs.adopt(int(read_line(parent.stdout)))
    parent.kill()
    parent.wait(10)
    assert eventually(gone(armed)), "set_parent_death_signal(SIGTERM) did not fire"
    assert eventually(gone(preexec)), "preexec_parent_death(SIGKILL) did not fire"


def test_watch_parent_fires_once_when_the_parent_is_not_the_one_given() -> None:
    calls: list[int] = []
    thread = processes.watch_parent(-12345, lambda: calls.append(1), interval=0.01)
    assert thread.daemon
    thread.join(5)
    assert not thread.is_alive() and calls == [1]


def test_watch_parent_fires_when_the_parent_dies(procs: Spawned) -> None:
    parent = procs.python(WATCHER_PARENT, stdout=subprocess.PIPE)
    watcher = procs.adopt(int(read_line(parent.stdout)))
    time.sleep(0.3)
    assert watcher.is_running()  # the parent lives: nothing fired
    parent.kill()
    parent.wait(10)
    assert read_line(parent.stdout) == "fired 1"
    assert eventually(gone(watcher))

