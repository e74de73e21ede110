"""Orphans: the runtimes that earlier runs of this instance left behind, and how a starting
node finds and kills them (the rules of ``ProcessRegistry.sweep``).

Safety rules (Linux ``/proc``):

- a process is signalled only if its pid still runs, its start time equals the recorded one,
  it belongs to this user, and its command line still carries ``--run-id <run>``: a reused
  pid is never signalled;
- only runs whose recording node is gone (pid dead, or alive with another start time) are
  swept: a live node of the same instance with another run id keeps its workers;
- a runtime is its own process group leader (``start_new_session=True``), so the group gets
  the signals: SIGTERM, a grace period, then SIGKILL;
- a runtime spawned but never recorded (node killed in between) is found in ``/proc`` by its
  command line (``--run-id R --instance NAME``, R a run of a gone node, never a run id that a
  live node uses, never a process older than R's node).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .. import processes
from ..processes import ProcessIdentity, process_cmdline, process_start_time

log = logging.getLogger("snakepit_tasks.node")

#: After SIGKILL, how long to wait for the killed processes to vanish (seconds).
KILL_WAIT_S = 2.0

#: A run as the registry keeps it: (run id, node pid, node start time).
Run = tuple[str, int, int]


class Recorded(Protocol):
    """What the sweep reads of one recorded runtime process."""

    @property
    def pid(self) -> int: ...
    @property
    def start_time(self) -> int: ...
    @property
    def run_id(self) -> str: ...
    @property
    def node_pid(self) -> int: ...
    @property
    def node_start_time(self) -> int: ...


@dataclass
class Found:
    """The outcome of :func:`find`."""

    #: The processes to kill now.
    targets: list[ProcessIdentity] = field(default_factory=list)
    #: Recorded pids that no longer run (gone, or the pid now names another process).
    ended: list[int] = field(default_factory=list)
    #: The runs of gone nodes.
    dead_runs: set[Run] = field(default_factory=set)


class NodeLiveness:
    """Whether a recording node still runs (same pid and start time), cached per sweep."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int], bool] = {}

    def __call__(self, pid: int, start_time: int) -> bool:
        key = (pid, start_time)
        if key not in self._cache:
            self._cache[key] = start_time != 0 and process_start_time(pid) == start_time
        return self._cache[key]


def has_pair(argv: Sequence[str], flag: str, value: str) -> bool:
    """Whether ``argv`` holds ``flag value`` as two consecutive arguments (or ``flag=value``)."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv) and argv[i + 1] == value:
            return True
        if arg == f"{flag}={value}":
            return True
    return False


def _mine(pid: int) -> bool:
    return processes.process_uid(pid) == os.getuid()


def still_runs(rec: Recorded) -> bool:
    """Whether the recorded process still runs: same pid and start time, and its command
    line still carries ``--run-id <its run>``."""
    return process_start_time(rec.pid) == rec.start_time and has_pair(
        process_cmdline(rec.pid) or [], "--run-id", rec.run_id
    )


def find(
    current_run_id: str, instance_name: str, records: Iterable[Recorded], runs: Iterable[Run]
) -> Found:
    """The leftovers to kill among ``records`` (and, for the runs of gone nodes, in
    ``/proc``), the records of processes that have ended, and the runs of gone nodes."""
    alive = NodeLiveness()
    records, runs = list(records), list(runs)
    # Run ids in use now: never looked for in /proc.
    live_runs = {current_run_id}
    live_runs.update(run for run, npid, nstart in runs if alive(npid, nstart))
    live_runs.update(r.run_id for r in records if alive(r.node_pid, r.node_start_time))
    found = Found(dead_runs={
        (run, npid, nstart) for run, npid, nstart in runs
        if run not in live_runs and not alive(npid, nstart)
    })
    for rec in records:
        if process_start_time(rec.pid) != rec.start_time:
            found.ended.append(rec.pid)  # gone, or the pid now belongs to another process
            continue
        if rec.run_id == current_run_id or alive(rec.node_pid, rec.node_start_time):
            continue
        if rec.run_id not in live_runs:
            found.dead_runs.add((rec.run_id, rec.node_pid, rec.node_start_time))
        argv = process_cmdline(rec.pid) or []
        if not has_pair(argv, "--run-id", rec.run_id):
            log.info("recorded pid %d no longer carries --run-id %s; leaving it alone",
                     rec.pid, rec.run_id)
            continue
        if not _mine(rec.pid):
            log.warning("leftover pid %d belongs to another user; cannot kill it", rec.pid)
            continue
        found.targets.append(ProcessIdentity(rec.pid, rec.start_time, tuple(argv)))
    # run id -> earliest start of its gone node(s): a runtime of the run cannot be older
    oldest: dict[str, int] = {}
    for run, _, nstart in found.dead_runs:
        if run:
            oldest[run] = min(nstart, oldest.get(run, nstart))
    if oldest:
        known = {t.pid for t in found.targets}
        found.targets.extend(t for t in scan(oldest, instance_name) if t.pid not in known)
    return found


def scan(runs: dict[str, int], instance_name: str) -> list[ProcessIdentity]:
    """Processes of this user in ``/proc`` whose command line carries ``--run-id R`` (R one
    of ``runs``) and ``--instance <instance_name>``, and which started no earlier than
    ``runs[R]`` (the start time of R's node)."""
    me = os.getpid()
    found = []
    for pid in processes.all_pids():
        if pid == me:
            continue
        argv = process_cmdline(pid)
        if not argv or "--run-id" not in argv and not any(
            a.startswith("--run-id=") for a in argv
        ):
            continue
        run = next((r for r in runs if has_pair(argv, "--run-id", r)), None)
        if run is None or not has_pair(argv, "--instance", instance_name):
            continue
        start = process_start_time(pid)
        if start is None or start < runs[run] or not _mine(pid):
            continue
        found.append(ProcessIdentity(pid, start, tuple(argv)))
    return found


def kill(targets: Sequence[ProcessIdentity], grace_s: float, instance_name: str) -> None:
    """SIGTERM each leftover's process group, SIGKILL after ``grace_s`` seconds."""
    log.warning(
        "killing %d leftover runtime process(es) of earlier runs of instance %r: %s",
        len(targets), instance_name or "default", ", ".join(str(t.pid) for t in targets),
    )
    processes.terminate_all(targets, grace_s, group=True, kill_wait=KILL_WAIT_S)
