"""Process registry: which adapter runtimes this host's nodes started, so that a starting node
can kill the leftovers of earlier runs of the same instance (orphans after a crash or a
SIGKILL of the node).

One SQLite file per instance (``instance_name`` + ``instance_token``) in the node's data dir:
``<data_dir>/process_registry_<name>__<token>.sqlite3``. A node of another instance uses
another file and is never touched.

:meth:`ProcessRegistry.sweep` kills the leftovers of gone nodes by the rules of
:mod:`snakepit_tasks.node.orphans`; a reused pid is never signalled.

Standard library only. Every connection lives for one operation, so the registry is safe for
several threads, for two processes (WAL and a busy timeout) and across ``fork``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..processes import ProcessIdentity, process_start_time
from . import orphans

log = logging.getLogger("snakepit_tasks.node")

#: How long a connection waits for another process's write lock (seconds).
BUSY_TIMEOUT_S = 10.0
#: Sweep passes when leftovers were found, and the pause between passes (seconds).
SWEEP_PASSES = 3
SWEEP_PASS_INTERVAL_S = 0.5

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


# -- paths -----------------------------------------------------------------------------------
def default_data_dir() -> Path:
    """Where a node keeps its state when the ``data_dir`` setting is empty:
    ``$XDG_STATE_HOME/snakepit-tasks``, else ``~/.local/state/snakepit-tasks``."""
    base = os.environ.get("XDG_STATE_HOME", "")
    if base and os.path.isabs(base):
        return Path(base) / "snakepit-tasks"
    return Path.home() / ".local" / "state" / "snakepit-tasks"


def file_part(value: str) -> str:
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
    name = file_part(instance_name)
    token = file_part(instance_token)
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


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    """Whether ``exc`` says another connection holds the file's lock."""
    message = str(exc).lower()
    return "locked" in message or "busy" in message


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
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._lock:
                    conn = self._connect()
                    try:
                        self._create_schema(conn)
                    finally:
                        conn.close()
                return
            except sqlite3.OperationalError as exc:  # cannot open, read-only, locked, ...
                if _is_locked(exc) and time.monotonic() < deadline:
                    # Another node sets the file up right now (SQLite does not wait for
                    # it on a journal-mode change): try again shortly.
                    time.sleep(0.05)
                    continue
                raise ConfigurationError(
                    f"cannot use the process registry {str(self.path)!r}: {exc}; set "
                    "data_dir (SNAKEPIT_DATA_DIR) to a writable directory",
                    {"path": str(self.path)},
                ) from exc
            except sqlite3.DatabaseError as exc:  # not a database, malformed
                if attempt >= 2:
                    raise ConfigurationError(
                        f"the process registry {str(self.path)!r} is unusable: {exc}",
                        {"path": str(self.path)},
                    ) from exc
                self._move_aside(exc)

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        """Create the tables (or upgrade an older file) in one transaction."""
        if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            conn.execute("PRAGMA journal_mode=WAL")  # once per file: it stays WAL
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
        proc = ProcessIdentity.of(pid)
        if proc is None:
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
                    (pid, proc.start_time, run_id, self.instance_name, self.instance_token,
                     worker_id, node_name, node_pid, node_start, json.dumps(proc.cmdline),
                     time.time()),
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
        alive = orphans.NodeLiveness()
        return [
            rec for rec in self.records()
            if rec.run_id != current_run_id and not alive(rec.node_pid, rec.node_start_time)
            and orphans.still_runs(rec)
        ]

    # -- sweeping ------------------------------------------------------------------------
    def sweep(self, current_run_id: str, *, grace_s: float = 2.0) -> list[int]:
        """Kill the leftovers of earlier runs of this instance; return the pids signalled.

        The rules are :mod:`~snakepit_tasks.node.orphans`'s: a leftover is a recorded
        process of another run whose node is gone, still running with the recorded start
        time and ``--run-id <its run>``, or an unrecorded one of a gone node's run found in
        ``/proc``. Each leftover's process group gets SIGTERM, then SIGKILL after ``grace_s``
        seconds. Up to three passes, 500 ms apart, while leftovers turn up. Records of
        processes that have ended are dropped, whatever their run.
        """
        killed: list[int] = []
        dead_runs: set[orphans.Run] = set()
        for n in range(SWEEP_PASSES):
            if n:
                time.sleep(SWEEP_PASS_INTERVAL_S)
            try:
                found = orphans.find(
                    current_run_id, self.instance_name, self.records(), self._runs())
                self._drop_ended(found.ended)
            except sqlite3.Error as exc:
                log.warning("process registry %s: sweep failed: %s", self.path, exc)
                return killed
            dead_runs |= found.dead_runs
            if not found.targets:
                break
            orphans.kill(found.targets, grace_s, self.instance_name)
            killed.extend(t.pid for t in found.targets if t.pid not in killed)
            try:
                self._drop_ended(t.pid for t in found.targets)
            except sqlite3.Error as exc:
                log.warning("process registry %s: %s", self.path, exc)
        try:
            self._drop_finished_runs(dead_runs)
        except sqlite3.Error as exc:
            log.warning("process registry %s: %s", self.path, exc)
        return killed

    def _runs(self) -> list[orphans.Run]:
        """Every noted run of this instance: (run id, node pid, node start time)."""
        where, args = self._where_instance()
        with self._db() as conn:
            rows = conn.execute(
                f"SELECT run_id, node_pid, node_start_time FROM runs WHERE {where}", args
            ).fetchall()
        return [(str(a), int(b), int(c)) for a, b, c in rows]

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

    def _drop_finished_runs(self, runs: set[orphans.Run]) -> None:
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

