"""Process registry: which adapter runtimes this host's nodes started, so that a starting node
can kill the leftovers of earlier runs of the same instance (orphans after a crash or a
SIGKILL of the node).

One SQLite file per instance (``instance_name`` + ``instance_token``) in the node's data dir:
``<data_dir>/process_registry_<name>__<token>.sqlite3``. A node of another instance uses
another file and is never touched.

Safety rules of :meth:`ProcessRegistry.sweep` (Linux ``/proc``):

- a process is signalled only if its pid still runs, its start time (``/proc/<pid>/stat``
  field 22) equals the recorded one, it belongs to this user, and its command line still
  carries ``--run-id <run>``: a reused pid is never signalled;
- only runs whose recording node is gone (pid dead, or alive with another start time) are
  swept: a live node of the same instance with another run id keeps its workers;
- a runtime is its own process group leader (``start_new_session=True``), so the group gets
  the signals: SIGTERM, ``grace_s`` seconds, then SIGKILL;
- a runtime spawned but never recorded (node killed in between) is found in ``/proc`` by its
  command line (``--run-id R --instance NAME``, R a run of a gone node noted by
  :meth:`ProcessRegistry.begin_run` or :meth:`ProcessRegistry.record`, never a run id that a
  live node uses, never a process older than R's node).

Standard library only. Every connection lives for one operation, so the registry is safe for
several threads, for two processes (WAL and a busy timeout) and across ``fork``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError

log = logging.getLogger("snakepit_tasks.node")

#: How long a connection waits for another process's write lock (seconds).
BUSY_TIMEOUT_S = 10.0
#: Sweep passes when leftovers were found, and the pause between passes (seconds).
SWEEP_PASSES = 3
SWEEP_PASS_INTERVAL_S = 0.5
#: After SIGKILL, how long to wait for the killed processes to vanish (seconds).
KILL_WAIT_S = 2.0
_POLL_S = 0.02

#: ``PRAGMA user_version`` of the file. 2: runs keyed by (run id, node pid, node start time).
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS processes (
    pid              INTEGER PRIMARY KEY,
    start_time       INTEGER NOT NULL,
    run_id           TEXT    NOT NULL,
    instance_name    TEXT    NOT NULL,
    instance_token   TEXT    NOT NULL,
    worker_id        TEXT    NOT NULL,
    node_name        TEXT    NOT NULL,
    node_pid         INTEGER NOT NULL,
    node_start_time  INTEGER NOT NULL,
    cmdline          TEXT    NOT NULL,
    recorded_at      REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS processes_run ON processes (run_id);
CREATE TABLE IF NOT EXISTS runs (
    run_id           TEXT    NOT NULL,
    instance_name    TEXT    NOT NULL,
    instance_token   TEXT    NOT NULL,
    node_name        TEXT    NOT NULL,
    node_pid         INTEGER NOT NULL,
    node_start_time  INTEGER NOT NULL,
    started_at       REAL    NOT NULL,
    PRIMARY KEY (run_id, node_pid, node_start_time)
);
"""

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


# -- /proc helpers ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Stat:
    state: str
    pgrp: int
    start_time: int


def _proc_stat(pid: int) -> _Stat | None:
    """State letter, process group and start time of ``pid``; None when it does not exist."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    rest = raw[raw.rfind(")") + 2 :].split()
    # rest[0] is field 3 (state), rest[2] field 5 (pgrp), rest[19] field 22 (starttime).
    try:
        return _Stat(rest[0], int(rest[2]), int(rest[19]))
    except (IndexError, ValueError):
        return None


def _live_stat(pid: int) -> _Stat | None:
    """Like :func:`_proc_stat`, but None for a zombie (it has ended; only its parent's wait
    is missing)."""
    st = _proc_stat(pid)
    if st is None or st.state in ("Z", "X", "x"):
        return None
    return st


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat`` field 22);
    None when no such process runs (gone, or a zombie). Together with the pid this
    identifies one process: a reused pid has another start time."""
    st = _live_stat(pid)
    return None if st is None else st.start_time


def process_cmdline(pid: int) -> list[str] | None:
    """The arguments of ``pid`` (``/proc/<pid>/cmdline``); None when it cannot be read,
    an empty list for a zombie or a kernel thread."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]] if raw else []


def _owned_by_me(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except OSError:
        return False


def _has_pair(argv: list[str], flag: str, value: str) -> bool:
    """Whether ``argv`` holds ``flag value`` as two consecutive arguments (or ``flag=value``)."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv) and argv[i + 1] == value:
            return True
        if arg == f"{flag}={value}":
            return True
    return False


def _all_pids() -> Iterator[int]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    for name in names:
        if name.isdigit():
            yield int(name)


# -- paths -----------------------------------------------------------------------------------
def default_data_dir() -> Path:
    """Where a node keeps its state when the ``data_dir`` setting is empty:
    ``$XDG_STATE_HOME/snakepit-tasks``, else ``~/.local/state/snakepit-tasks``."""
    base = os.environ.get("XDG_STATE_HOME", "")
    if base and os.path.isabs(base):
        return Path(base) / "snakepit-tasks"
    return Path.home() / ".local" / "state" / "snakepit-tasks"


def _file_part(value: str) -> str:
    """``value`` made safe for a file name: 'default' when empty; characters other than
    letters, digits, ``.``, ``_`` and ``-`` replaced, plus a short hash when anything was
    replaced (so two different names never share a file)."""
    if not value:
        return "default"
    safe = _SAFE.sub("_", value)[:64]
    if safe != value or safe in (".", ".."):
        safe = f"{safe}-{hashlib.sha256(value.encode()).hexdigest()[:10]}"
    return safe


def registry_path(
    data_dir: str | os.PathLike[str], instance_name: str, instance_token: str
) -> Path:
    """The registry file of one instance."""
    name = _file_part(instance_name)
    token = _file_part(instance_token)
    return Path(data_dir) / f"process_registry_{name}__{token}.sqlite3"


# -- records ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcessRecord:
    """One recorded runtime process (the instance token is left out: it may be a secret)."""

    pid: int
    start_time: int
    run_id: str
    instance_name: str
    worker_id: str
    node_name: str
    node_pid: int
    node_start_time: int
    cmdline: tuple[str, ...]
    recorded_at: float

    def describe(self) -> str:
        """One line for status/doctor output."""
        return (
            f"pid {self.pid} (worker {self.worker_id}, run {self.run_id}, "
            f"node {self.node_name} pid {self.node_pid})"
        )


_COLUMNS = (
    "pid, start_time, run_id, instance_name, worker_id, node_name, node_pid, "
    "node_start_time, cmdline, recorded_at"
)


def _to_record(row: tuple[Any, ...]) -> ProcessRecord:
    try:
        argv = json.loads(str(row[8]))
        cmd = tuple(str(a) for a in argv) if isinstance(argv, list) else ()
    except ValueError:
        cmd = ()
    return ProcessRecord(
        pid=int(row[0]),
        start_time=int(row[1]),
        run_id=str(row[2]),
        instance_name=str(row[3]),
        worker_id=str(row[4]),
        node_name=str(row[5]),
        node_pid=int(row[6]),
        node_start_time=int(row[7]),
        cmdline=cmd,
        recorded_at=float(row[9]),
    )


@dataclass(frozen=True)
class _Target:
    pid: int
    start_time: int


class ProcessRegistry:
    """The runtime processes the nodes of one instance started, kept in SQLite.

    ``record`` after each spawn, ``forget`` when a runtime was reaped, ``sweep`` when a node
    starts (before it spawns anything), ``leftovers`` for status/doctor output.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None,
        instance_name: str = "",
        instance_token: str = "",
    ) -> None:
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        self.instance_name = instance_name
        self.instance_token = instance_token
        self.path = registry_path(self.data_dir, instance_name, instance_token)
        self._lock = threading.Lock()
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create the data dir {str(self.data_dir)!r} for the process registry "
                f"({exc.strerror or exc}); set data_dir (SNAKEPIT_DATA_DIR) to a writable "
                "directory",
                {"data_dir": str(self.data_dir)},
            ) from exc
        self._init_schema()

    # -- storage -------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @contextmanager
    def _db(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection for one operation; in a transaction when ``write``."""
        with self._lock:
            conn = self._connect()
            try:
                if write:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        yield conn
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
                else:
                    yield conn
            finally:
                conn.close()

    def _init_schema(self) -> None:
        for attempt in (1, 2):
            try:
                with self._lock:
                    conn = self._connect()
                    try:
                        self._create_schema(conn)
                    finally:
                        conn.close()
                return
            except sqlite3.OperationalError as exc:  # cannot open, read-only, locked, ...
                raise ConfigurationError(
                    f"cannot use the process registry {str(self.path)!r}: {exc}; set "
                    "data_dir (SNAKEPIT_DATA_DIR) to a writable directory",
                    {"path": str(self.path)},
                ) from exc
            except sqlite3.DatabaseError as exc:  # not a database, malformed
                if attempt == 2:
                    raise ConfigurationError(
                        f"the process registry {str(self.path)!r} is unusable: {exc}",
                        {"path": str(self.path)},
                    ) from exc
                self._move_aside(exc)

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        """Create the tables (or upgrade an older file) in one transaction."""
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version < SCHEMA_VERSION:
                # Version 1 keyed runs by run id alone; runs only help the sweep: start anew.
                conn.execute("DROP TABLE IF EXISTS runs")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("SELECT COUNT(*) FROM processes").fetchone()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _move_aside(self, exc: BaseException) -> None:
        """The file is not a usable database: keep it for inspection and start afresh."""
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        log.warning("process registry %s is unreadable (%s); moved it to %s",
                    self.path, exc, aside)
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                try:
                    src.rename(Path(f"{aside}{suffix}"))
                except OSError:
                    src.unlink(missing_ok=True)

    def _where_instance(self) -> tuple[str, tuple[str, str]]:
        """SQL condition (and its arguments) selecting this instance's rows."""
        return "instance_name = ? AND instance_token = ?", (
            self.instance_name, self.instance_token)

    # -- recording -----------------------------------------------------------------------
    def begin_run(self, run_id: str, node_name: str) -> None:
        """Note that this process (a node) starts run ``run_id``. Optional — :meth:`record`
        does it too — but calling it before the first spawn lets a later :meth:`sweep` find
        runtimes of this run that were spawned and never recorded (node killed in between)."""
        try:
            with self._db(write=True) as conn:
                self._insert_run(conn, run_id, node_name)
        except sqlite3.Error as exc:
            log.warning("process registry %s: cannot note run %s: %s", self.path, run_id, exc)

    def _insert_run(self, conn: sqlite3.Connection, run_id: str, node_name: str) -> None:
        node_pid = os.getpid()
        conn.execute(
            "INSERT OR IGNORE INTO runs (run_id, instance_name, instance_token, node_name,"
            " node_pid, node_start_time, started_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (run_id, self.instance_name, self.instance_token, node_name, node_pid,
             process_start_time(node_pid) or 0, time.time()),
        )

    def record(self, pid: int, *, run_id: str, worker_id: str, node_name: str) -> bool:
        """Remember runtime ``pid`` (spawned by this process, for run ``run_id``) with its
        start time and command line. Returns False (and records nothing) when ``pid`` no
        longer runs."""
        start = process_start_time(pid)
        argv = process_cmdline(pid)
        if start is None or argv is None:
            return False
        node_pid = os.getpid()
        node_start = process_start_time(node_pid) or 0
        try:
            with self._db(write=True) as conn:
                self._insert_run(conn, run_id, node_name)
                conn.execute(
                    "INSERT OR REPLACE INTO processes (pid, start_time, run_id, instance_name,"
                    " instance_token, worker_id, node_name, node_pid, node_start_time, cmdline,"
                    " recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (pid, start, run_id, self.instance_name, self.instance_token, worker_id,
                     node_name, node_pid, node_start, json.dumps(argv), time.time()),
                )
        except sqlite3.Error as exc:
            log.warning("process registry %s: cannot record pid %d: %s", self.path, pid, exc)
            return False
        return True

    def forget(self, pid: int) -> None:
        """Drop the record of ``pid`` (the runtime exited and was reaped)."""
        where, args = self._where_instance()
        try:
            with self._db(write=True) as conn:
                conn.execute(f"DELETE FROM processes WHERE pid = ? AND {where}", (pid, *args))
        except sqlite3.Error as exc:
            log.warning("process registry %s: cannot forget pid %d: %s", self.path, pid, exc)

    def end_run(self, run_id: str) -> None:
        """A node stopped run ``run_id`` cleanly: drop the run and the records of its
        processes that have ended (one still running stays, for a later sweep)."""
        where, args = self._where_instance()
        try:
            with self._db(write=True) as conn:
                rows = conn.execute(
                    f"SELECT pid, start_time FROM processes WHERE run_id = ? AND {where}",
                    (run_id, *args),
                ).fetchall()
                gone = [int(p) for p, start in rows if process_start_time(int(p)) != start]
                conn.executemany(
                    f"DELETE FROM processes WHERE pid = ? AND {where}",
                    [(p, *args) for p in gone],
                )
                if len(gone) == len(rows):
                    conn.execute(
                        f"DELETE FROM runs WHERE run_id = ? AND node_pid = ? AND {where}",
                        (run_id, os.getpid(), *args),
                    )
        except sqlite3.Error as exc:
            log.warning("process registry %s: cannot end run %s: %s", self.path, run_id, exc)

    # -- reading -------------------------------------------------------------------------
    def records(self) -> list[ProcessRecord]:
        """Every recorded process of this instance, running or not, oldest first."""
        where, args = self._where_instance()
        with self._db() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM processes WHERE {where} ORDER BY recorded_at, pid",
                args,
            ).fetchall()
        return [_to_record(tuple(r)) for r in rows]

    def leftovers(self, current_run_id: str | None = None) -> list[ProcessRecord]:
        """Recorded processes that still run (same pid and start time) although the node
        that started them is gone (and whose run is not ``current_run_id``): what the next
        :meth:`sweep` would kill. Signals nothing, changes nothing."""
        found = []
        alive = _NodeLiveness()
        for rec in self.records():
            if rec.run_id == current_run_id or alive(rec.node_pid, rec.node_start_time):
                continue
            if process_start_time(rec.pid) == rec.start_time and _has_pair(
                process_cmdline(rec.pid) or [], "--run-id", rec.run_id
            ):
                found.append(rec)
        return found

    # -- sweeping ------------------------------------------------------------------------
    def sweep(self, current_run_id: str, *, grace_s: float = 2.0) -> list[int]:
        """Kill the leftovers of earlier runs of this instance; return the pids signalled.

        A recorded process is a leftover when its run is not ``current_run_id``, the node
        that recorded it is gone, and the pid still runs with the recorded start time and a
        command line carrying ``--run-id <its run>``. Processes of a gone node's run that
        were never recorded are found in ``/proc`` by ``--run-id <run>`` and
        ``--instance <name>`` (never for a run id a live node also uses). Each leftover's
        process group gets SIGTERM, then SIGKILL after ``grace_s`` seconds. Up to three
        passes, 500 ms apart, while leftovers turn up. Records of processes that have ended
        are dropped, whatever their run.
        """
        killed: list[int] = []
        dead_runs: set[tuple[str, int, int]] = set()
        for n in range(SWEEP_PASSES):
            if n:
                time.sleep(SWEEP_PASS_INTERVAL_S)
            try:
                targets, found_runs = self._find_leftovers(current_run_id)
            except sqlite3.Error as exc:
                log.warning("process registry %s: sweep failed: %s", self.path, exc)
                return killed
            dead_runs |= found_runs
            if not targets:
                break
            log.warning(
                "killing %d leftover runtime process(es) of earlier runs of instance %r: %s",
                len(targets), self.instance_name or "default",
                ", ".join(str(t.pid) for t in targets),
            )
            _terminate(targets, grace_s)
            killed.extend(t.pid for t in targets if t.pid not in killed)
            try:
                self._drop_ended(t.pid for t in targets)
            except sqlite3.Error as exc:
                log.warning("process registry %s: %s", self.path, exc)
        try:
            self._drop_finished_runs(dead_runs)
        except sqlite3.Error as exc:
            log.warning("process registry %s: %s", self.path, exc)
        return killed

    def _find_leftovers(
        self, current_run_id: str
    ) -> tuple[list[_Target], set[tuple[str, int, int]]]:
        """The processes to kill now, and the runs (run id, node pid, node start time) of
        gone nodes; drops the records of processes that have ended."""
        where, args = self._where_instance()
        alive = _NodeLiveness()
        with self._db() as conn:
            procs = conn.execute(
                f"SELECT pid, start_time, run_id, node_pid, node_start_time FROM processes "
                f"WHERE {where}",
                args,
            ).fetchall()
            runs = conn.execute(
                f"SELECT run_id, node_pid, node_start_time FROM runs WHERE {where}", args
            ).fetchall()
        procs = [(int(a), int(b), str(c), int(d), int(e)) for a, b, c, d, e in procs]
        runs = [(str(a), int(b), int(c)) for a, b, c in runs]
        # Run ids in use now: never looked for in /proc.
        live_runs = {current_run_id}
        live_runs.update(run for run, npid, nstart in runs if alive(npid, nstart))
        live_runs.update(run for _, _, run, npid, nstart in procs if alive(npid, nstart))
        dead_runs = {
            (run, npid, nstart) for run, npid, nstart in runs
            if run not in live_runs and not alive(npid, nstart)
        }
        targets: list[_Target] = []
        ended: list[int] = []
        for pid, start, run, node_pid, node_start in procs:
            if process_start_time(pid) != start:
                ended.append(pid)  # gone, or the pid now belongs to another process
                continue
            if run == current_run_id or alive(node_pid, node_start):
                continue
            if run not in live_runs:
                dead_runs.add((run, node_pid, node_start))
            argv = process_cmdline(pid) or []
            if not _has_pair(argv, "--run-id", run):
                log.info("recorded pid %d no longer carries --run-id %s; leaving it alone",
                         pid, run)
                continue
            if not _owned_by_me(pid):
                log.warning("leftover pid %d belongs to another user; cannot kill it", pid)
                continue
            targets.append(_Target(pid, start))
        if ended:
            self._drop_ended(ended)
        # run id -> earliest start of its gone node(s): a runtime of the run cannot be older
        scan: dict[str, int] = {}
        for run, _, nstart in dead_runs:
            if run:
                scan[run] = min(nstart, scan.get(run, nstart))
        if scan:
            known = {t.pid for t in targets}
            targets.extend(t for t in self._scan(scan) if t.pid not in known)
        return targets, dead_runs

    def _scan(self, runs: dict[str, int]) -> list[_Target]:
        """Processes of this user in ``/proc`` whose command line carries ``--run-id R`` (R
        one of ``runs``) and ``--instance <this instance's name>``, and which started no
        earlier than R's node."""
        me = os.getpid()
        found = []
        for pid in _all_pids():
            if pid == me:
                continue
            argv = process_cmdline(pid)
            if not argv or "--run-id" not in argv and not any(
                a.startswith("--run-id=") for a in argv
            ):
                continue
            run = next((r for r in runs if _has_pair(argv, "--run-id", r)), None)
            if run is None or not _has_pair(argv, "--instance", self.instance_name):
                continue
            start = process_start_time(pid)
            if start is None or start < runs[run] or not _owned_by_me(pid):
                continue
            found.append(_Target(pid, start))
        return found

    def _drop_ended(self, pids: Iterable[int]) -> None:
        """Drop the records of ``pids`` whose recorded process no longer runs."""
        where, args = self._where_instance()
        wanted = list(pids)
        if not wanted:
            return
        with self._db(write=True) as conn:
            for pid in wanted:
                row = conn.execute(
                    f"SELECT start_time FROM processes WHERE pid = ? AND {where}", (pid, *args)
                ).fetchone()
                if row is not None and process_start_time(pid) != int(row[0]):
                    conn.execute(
                        f"DELETE FROM processes WHERE pid = ? AND {where}", (pid, *args))

    def _drop_finished_runs(self, runs: set[tuple[str, int, int]]) -> None:
        """Forget the runs of gone nodes that have no recorded process left."""
        if not runs:
            return
        where, args = self._where_instance()
        same_run = "run_id = ? AND node_pid = ? AND node_start_time = ?"
        with self._db(write=True) as conn:
            for run in runs:
                left = conn.execute(
                    f"SELECT COUNT(*) FROM processes WHERE {same_run} AND {where}", (*run, *args)
                ).fetchone()[0]
                if not left:
                    conn.execute(f"DELETE FROM runs WHERE {same_run} AND {where}", (*run, *args))


class _NodeLiveness:
    """Whether a recording node still runs (same pid and start time), cached per sweep."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int], bool] = {}

    def __call__(self, pid: int, start_time: int) -> bool:
        key = (pid, start_time)
        if key not in self._cache:
            self._cache[key] = start_time != 0 and process_start_time(pid) == start_time
        return self._cache[key]


# -- signalling ------------------------------------------------------------------------------
def _same(target: _Target) -> bool:
    return process_start_time(target.pid) == target.start_time


def _group_has_members(pgid: int) -> bool:
    """Whether any live process is in process group ``pgid``. While one is, the number
    ``pgid`` cannot have been handed to a new process, so the group is still the old one."""
    for pid in _all_pids():
        st = _live_stat(pid)
        if st is not None and st.pgrp == pgid:
            return True
    return False


def _signal(target: _Target, sig: int, leader: bool) -> None:
    """Send ``sig`` to the target's group if it leads one, else to the process alone; only
    while the target is still the recorded process (or, for the group, while the group it
    led still has members)."""
    try:
        if _same(target):
            st = _live_stat(target.pid)
            if st is not None and st.pgrp == target.pid:
                os.killpg(target.pid, sig)
            else:
                os.kill(target.pid, sig)
        elif leader and _group_has_members(target.pid):
            os.killpg(target.pid, sig)  # the leader is gone, its group lives on
    except (ProcessLookupError, PermissionError):
        pass


def _terminate(targets: list[_Target], grace_s: float) -> None:
    """SIGTERM each target's group, wait up to ``grace_s`` for the targets to end, SIGKILL
    what is left (groups included), and wait a little for them to vanish."""
    leaders = {}
    for t in targets:
        st = _live_stat(t.pid)
        leaders[t.pid] = st is not None and st.pgrp == t.pid
        _signal(t, signal.SIGTERM, leaders[t.pid])
    deadline = time.monotonic() + max(0.0, grace_s)
    while any(_same(t) for t in targets) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    for t in targets:
        _signal(t, signal.SIGKILL, leaders[t.pid])
    deadline = time.monotonic() + KILL_WAIT_S
    while any(_same(t) for t in targets) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    for t in targets:
        if _same(t):
            log.warning("leftover pid %d survived SIGKILL (uninterruptible?)", t.pid)
