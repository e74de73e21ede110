"""Process control: who a pid is, dying with the parent, and stopping processes.

- Who a pid is (Linux ``/proc``): :class:`ProcessIdentity` is a pid plus its start time, so a
  reused pid is never taken for the process it once named; zombies count as ended.
- How a process ended: :class:`ExitStatus`.
- What ``/proc/<pid>/cmdline`` shows: :func:`set_cmdline` (a forked process tells what it is).
- Dying with the parent: :func:`set_parent_death_signal` (``prctl(PR_SET_PDEATHSIG)``, Linux),
  :func:`preexec_parent_death` for ``Popen(preexec_fn=...)``, and :func:`watch_parent`, a
  thread that notices a new parent pid on any platform.
- Stopping: :func:`terminate` / :func:`terminate_all` send SIGTERM, wait up to a grace
  period, then SIGKILL; :func:`kill` sends SIGKILL at once. A target is a child process (a
  :class:`subprocess.Popen`, or anything with its ``pid``/``poll()``/``returncode``, like a
  worker forked by the zygote), a :class:`ProcessIdentity`, or a bare pid. With ``group=True``
  a target that leads a process group (``start_new_session=True``) is signalled with its
  whole group, also after the leader itself has ended while members remain.

Standard library only: the adapter runtime imports this module.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger("snakepit_tasks.processes")

#: Exit code of a node whose adapter cannot be imported (EX_CONFIG): it would fail the same
#: way on every start, so the supervisor does not restart it.
EXIT_ADAPTER_UNLOADABLE = 78
#: ``prctl`` option of ``<linux/prctl.h>``: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1
#: After SIGKILL, how long :func:`terminate` waits for the target to vanish (seconds).
KILL_WAIT_S = 5.0
#: How often a wait looks at its targets again (seconds).
POLL_S = 0.02

_PROC = "/proc"
_GONE_STATES = ("Z", "X", "x")  # zombie or dead: ended, only the parent's wait is missing


# -- /proc -----------------------------------------------------------------------------------
def has_proc() -> bool:
    """Whether this system has a Linux-style ``/proc`` to read processes from."""
    return os.path.isdir(f"{_PROC}/self")


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` this package reads."""

    state: str
    pgrp: int
    start_time: int

    @property
    def ended(self) -> bool:
        """A zombie (or dead) process: it has ended, only its parent's wait is missing."""
        return self.state in _GONE_STATES


def proc_stat(pid: int) -> ProcStat | None:
    """State letter, process group and start time of ``pid`` (zombies included); None when
    no such process exists or ``/proc`` cannot be read."""
    if pid <= 0:
        return None
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    rest = raw[raw.rfind(")") + 2 :].split()
    # rest[0] is field 3 (state), rest[2] field 5 (pgrp), rest[19] field 22 (starttime).
    try:
        return ProcStat(rest[0], int(rest[2]), int(rest[19]))
    except (IndexError, ValueError):
        return None


def _live_stat(pid: int) -> ProcStat | None:
    st = proc_stat(pid)
    return None if st is None or st.ended else st


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat`` field 22);
    None when no such process runs (gone, or a zombie). Together with the pid this
    identifies one process: a reused pid has another start time."""
    st = _live_stat(pid)
    return None if st is None else st.start_time


def process_cmdline(pid: int) -> list[str] | None:
    """The arguments of ``pid`` (``/proc/<pid>/cmdline``); None when it cannot be read,
    an empty list for a zombie or a kernel thread."""
    if pid <= 0:
        return None
    try:
        with open(f"{_PROC}/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # Trailing NULs: the padding of a rewritten command line (see set_cmdline).
    return [part.decode(errors="replace") for part in raw.rstrip(b"\0").split(b"\0")] if raw else []


def process_uid(pid: int) -> int | None:
    """The user id that owns ``pid``; None when it cannot be read."""
    if pid <= 0:
        return None
    try:
        return os.stat(f"{_PROC}/{pid}").st_uid
    except OSError:
        return None


def process_group(pid: int) -> int | None:
    """The process group of running ``pid``; None when it does not run (or is a zombie)."""
    st = _live_stat(pid)
    return None if st is None else st.pgrp


def all_pids() -> Iterator[int]:
    """Every pid in ``/proc`` (none where there is no ``/proc``)."""
    try:
        names = os.listdir(_PROC)
    except OSError:
        return
    for name in names:
        if name.isdigit():
            yield int(name)


def group_members(pgid: int) -> list[int]:
    """The running (not zombie) processes of process group ``pgid``. While there is one, the
    number ``pgid`` cannot be handed to a new process, so the group is still the old one."""
    if pgid <= 0:
        return []
    return [pid for pid in all_pids() if process_group(pid) == pgid]


@dataclass(frozen=True)
class ProcessIdentity:
    """One process: its pid and start time (a reused pid has another), and its arguments."""

    pid: int
    start_time: int
    cmdline: tuple[str, ...] = ()

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        """The process ``pid`` names now; None when none runs (gone, a zombie, no ``/proc``)."""
        start = process_start_time(pid)
        argv = process_cmdline(pid)
        # Read the start time again: the pid may have ended (and been reused) in between.
        if start is None or argv is None or process_start_time(pid) != start:
            return None
        return cls(pid, start, tuple(argv))

    def is_running(self) -> bool:
        """Whether this very process still runs: same pid and start time, not a zombie."""
        return process_start_time(self.pid) == self.start_time


def set_cmdline(argv: list[str]) -> bool:
    """Rewrite what ``/proc/self/cmdline`` (and ``ps``) shows as ``argv``, in the memory the
    kernel reads it from (Linux >= 3.5). Only as long as the arguments this process was started
    with: False, and nothing changed, when ``argv`` does not fit or there is no such memory."""
    try:
        with open(f"{_PROC}/self/stat", "rb") as f:
            raw = f.read().decode()
        fields = raw[raw.rfind(")") + 2 :].split()
        # fields[0] is field 3: arg_start and arg_end are fields 48 and 49.
        start, end = int(fields[45]), int(fields[46])
    except (OSError, ValueError, IndexError):
        return False
    data = b"".join(a.encode() + b"\0" for a in argv)
    if not start or len(data) > end - start:
        return False
    # Padded with NULs to the end: the kernel shows the area up to its last byte, a NUL.
    ctypes.memmove(start, data.ljust(end - start, b"\0"), end - start)
    return True


# -- dying with the parent -------------------------------------------------------------------
@functools.cache
def _prctl() -> Any:
    """libc's ``prctl`` (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _arm(prctl: Any, sig: int) -> bool:
    if prctl is None:
        return False
    zero = ctypes.c_ulong(0)
    return bool(prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(int(sig)), zero, zero, zero) == 0)


def set_parent_death_signal(sig: int) -> bool:
    """Have the kernel send ``sig`` to this process when its parent (the thread that started
    it) ends. Linux only: returns False where it is not available or failed."""
    return _arm(_prctl(), sig)


def preexec_parent_death(sig: int) -> Callable[[], None]:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child gets ``sig`` when the
    process that started it dies (Linux; does nothing elsewhere)."""
    prctl = _prctl()  # looked up here, in the parent: the child only makes the call

    def arm() -> None:
        _arm(prctl, sig)

    return arm


def watch_parent(
    parent_pid: int, on_death: Callable[[], None], interval: float = 0.5
) -> threading.Thread:
    """Start a daemon thread that calls ``on_death`` once, as soon as this process's parent
    is no longer ``parent_pid`` (checked every ``interval`` seconds, the first time at once)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        on_death()

    thread = threading.Thread(target=watch, name="snakepit-parent-watch", daemon=True)
    thread.start()
    return thread


@dataclass
class ExitStatus:
    """How a process ended (a Popen-style return code): exit code, or the signal that killed
    it, and that in words (:meth:`describe`)."""

    returncode: int

    @property
    def signal(self) -> str | None:
        if self.returncode < 0:
            try:
                return signal.Signals(-self.returncode).name
            except ValueError:
                return f"signal {-self.returncode}"
        return None

    def describe(self) -> str:
        return f"killed by {self.signal}" if self.signal else f"exited with code {self.returncode}"


# -- stopping --------------------------------------------------------------------------------
@runtime_checkable
class ChildProcess(Protocol):
    """A child process as :class:`subprocess.Popen` has it: its pid stays its own until
    :meth:`poll` has seen it end (it is not reaped behind our back)."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    def poll(self) -> int | None: ...


Target = ChildProcess | ProcessIdentity | int


@dataclass(frozen=True)
class Ending:
    """How one target of :func:`terminate_all` ended."""

    pid: int
    #: The exit status when known (a child :class:`~subprocess.Popen`): <0 for a signal.
    returncode: int | None
    #: It still ran after the grace period, so it got SIGKILL.
    killed: bool
    #: It still ran after SIGKILL and the wait that follows (uninterruptible?).
    survived: bool


class _Handle:
    """One target: how to tell that it still runs, and how to signal it (and its group)."""

    def __init__(self, target: Target, group: bool) -> None:
        self.identity = target if isinstance(target, ProcessIdentity) else None
        self.popen = (target if not isinstance(target, (int, ProcessIdentity))
                      and isinstance(target, ChildProcess) else None)
        self.pid = target if isinstance(target, int) else target.pid
        # A bare pid: its identity now, or (no /proc) its liveness by os.kill(pid, 0).
        self.bare = isinstance(target, int) and not has_proc()
        if isinstance(target, int) and not self.bare:
            self.identity = ProcessIdentity.of(target)
        self.leads = group and self.running() and self._leads_group()

    def _leads_group(self) -> bool:
        st = proc_stat(self.pid)
        if st is not None:
            return st.pgrp == self.pid
        return not has_proc()  # cannot tell: trust group=True (start_new_session=True)

    def running(self) -> bool:
        if self.pid <= 0:
            return False
        if self.popen is not None:
            return self.popen.poll() is None  # not reaped yet: the pid is still ours
        if self.identity is not None:
            return self.identity.is_running()
        if not self.bare:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def signal(self, sig: int) -> bool:
        """Send ``sig`` to the target (its group when it leads one); to a group whose leader
        has ended while members remain. False when nothing was signalled."""
        try:
            if self.running():
                if self.leads:
                    os.killpg(self.pid, sig)
                else:
                    os.kill(self.pid, sig)
                return True
            if self.leads and group_members(self.pid):
                os.killpg(self.pid, sig)  # the leader is gone, its group lives on
                return True
        except (ProcessLookupError, PermissionError):
            pass
        return False


def _wait(handles: list[_Handle], timeout: float) -> None:
    deadline = time.monotonic() + max(0.0, timeout)
    while any(h.running() for h in handles) and time.monotonic() < deadline:
        time.sleep(POLL_S)


def send(target: Target, sig: int, *, group: bool = False) -> bool:
    """Send ``sig`` now, if ``target`` still runs; True when something was signalled."""
    return _Handle(target, group).signal(sig)


def kill(target: Target, *, group: bool = False) -> bool:
    """SIGKILL ``target`` (with its group when ``group``) now, without waiting."""
    return send(target, signal.SIGKILL, group=group)


def terminate_all(
    targets: Iterable[Target],
    grace: float,
    *,
    group: bool = False,
    kill_wait: float = KILL_WAIT_S,
) -> list[Ending]:
    """Stop every target: SIGTERM all of them first, wait up to ``grace`` seconds for all at
    once, SIGKILL what is left (groups included), wait up to ``kill_wait`` seconds for those
    to vanish. Targets that have already ended are left alone. Returns one :class:`Ending`
    per target, in order."""
    handles = [_Handle(t, group) for t in targets]
    for h in handles:
        h.signal(signal.SIGTERM)
    _wait(handles, grace)
    killed = [h.running() for h in handles]
    for h in handles:
        h.signal(signal.SIGKILL)
    _wait(handles, kill_wait)
    endings = []
    for h, was_killed in zip(handles, killed, strict=True):
        survived = h.running()
        if survived:
            log.warning("pid %d survived SIGKILL (uninterruptible?)", h.pid)
        code = h.popen.returncode if h.popen is not None else None
        endings.append(Ending(h.pid, code, was_killed, survived))
    return endings


def terminate(
    target: Target, grace: float, *, group: bool = False, kill_wait: float = KILL_WAIT_S
) -> int | None:
    """Stop ``target``: SIGTERM, up to ``grace`` seconds, then SIGKILL (see
    :func:`terminate_all`). Returns the exit status when known (a child Popen)."""
    return terminate_all([target], grace, group=group, kill_wait=kill_wait)[0].returncode
