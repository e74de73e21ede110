"""Shared helpers for the test suites: waiting, processes, node handles, the CLI.

Nothing here starts anything at import time; the fixtures in ``tests/conftest.py`` use these.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
INTEGRATION = TESTS / "integration"

SHOWCASE = "adapters.showcase:ShowcaseAdapter"
# A second adapter for the tests (tests/integration/itest_adapters.py), made importable in the
# runtimes through the pool's adapter_env.
WHOAMI = "itest_adapters:WhoAmIAdapter"
WHOAMI_ENV = {"PYTHONPATH": str(INTEGRATION)}
# The showcase tools plus tools that record each run's call id in a file (same adapter_env).
RECORDING = "itest_adapters:RecordingAdapter"

NODE_STOP_TIMEOUT = 30.0
_data_dir: list[str] = []


def data_dir() -> str:
    """A private SNAKEPIT_DATA_DIR for the processes this test run starts (made on first use,
    removed by :func:`remove_data_dir`)."""
    if not _data_dir:
        _data_dir.append(tempfile.mkdtemp(prefix="snakepit-itest-"))
    return _data_dir[0]


def remove_data_dir() -> None:
    while _data_dir:
        shutil.rmtree(_data_dir.pop(), ignore_errors=True)


# -- waiting -------------------------------------------------------------------------------
def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> Any:
    """Call ``predicate`` until it returns a truthy value (returned); AssertionError after
    ``timeout`` seconds. Exceptions raised by ``predicate`` count as "not yet"."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # not ready yet
            last_exc = exc
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {text}{extra}")
        time.sleep(interval)


def unique_pool(prefix: str = "t") -> str:
    """A pool name no other test uses (so queues and keys never collide)."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def pool_table(
    name: str,
    adapter: str = SHOWCASE,
    pool_size: int = 1,
    **extra: Any,
) -> dict[str, Any]:
    """One entry of SNAKEPIT_POOLS / ``pools=``."""
    table: dict[str, Any] = {"name": name, "adapter": adapter, "pool_size": pool_size}
    table.update(extra)
    return table


# -- processes -----------------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    # rest[0] is field 3 (state); field 22 (starttime) is rest[19].
    try:
        return rest[0], int(rest[19])
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    """Start time of a live (non-zombie) process, None when it is gone or a zombie."""
    st = _stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return None
    return st[1]


def cmdline(pid: int) -> str:
    """The command line of ``pid`` as one string ('' when gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def children(pid: int) -> set[int]:
    """Direct children of ``pid`` (every thread's children)."""
    found: set[int] = set()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.update(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return found


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, grandchildren, ...)."""
    seen: set[int] = set()
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


class ProcessTracker:
    """Remembers every process seen below some root processes, so a test can assert that
    none of them survives. Samples the process tree from a background thread and whenever
    :meth:`sample` or :meth:`record` is called. Processes are identified by (pid, start time),
    so a reused pid is never mistaken for a survivor."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.roots: set[int] = set()
        self.seen: dict[int, tuple[int, str]] = {}  # pid -> (start time, command line)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pid-tracker", daemon=True)
        self._thread.start()

    def track(self, root: int) -> None:
        """Watch ``root`` and everything below it (the root itself is the caller's to reap)."""
        with self._lock:
            self.roots.add(root)
        self.sample()

    def record(self, pid: int) -> None:
        """Remember one process (e.g. a runtime pid read from Redis)."""
        st = start_time(pid)
        if st is None:
            return
        shown = cmdline(pid)
        with self._lock:
            first = self.seen.get(pid)
            if first is None or first[0] == st and shown:
                # The same process again: its latest command line (a child seen between
                # fork and exec still showed its parent's).
                self.seen[pid] = (st, shown)

    def sample(self) -> None:
        with self._lock:
            roots = list(self.roots)
        for root in roots:
            for pid in descendants(root):
                self.record(pid)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def alive(self) -> dict[int, str]:
        """Recorded processes that still run (same pid and start time), with their command."""
        with self._lock:
            seen = dict(self.seen)
        return {
            pid: cmd for pid, (st, cmd) in seen.items() if start_time(pid) == st
        }

    def assert_all_gone(self, timeout: float = 10.0) -> None:
        """Wait up to ``timeout`` for every recorded process to end; SIGKILL survivors and fail."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.alive()
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        assert not left, f"processes left running after the test (now killed): {left}"


def subprocess_env(redis_url: str | None = None, pools: Iterable[dict[str, Any]] | None = None,
                   **extra: str) -> dict[str, str]:
    """This process's environment without SNAKEPIT_* variables, plus the given settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAKEPIT_")}
    env["PYTHONUNBUFFERED"] = "1"
    # A process registry of our own: orphan sweeps of other processes on this machine (other
    # test runs, benchmarks) never see our runtimes, and ours never see theirs.
    env["SNAKEPIT_DATA_DIR"] = data_dir()
    # Nodes are silent by default (errors only); tests read their warnings.
    env["SNAKEPIT_LOG_LEVEL"] = "warning"
    if redis_url:
        env["SNAKEPIT_REDIS_URL"] = redis_url
    if pools is not None:
        env["SNAKEPIT_POOLS"] = json.dumps(list(pools))
    env.update(extra)
    return env


def terminate(proc: subprocess.Popen[Any], timeout: float = NODE_STOP_TIMEOUT) -> int:
    """SIGTERM, wait ``timeout``, then SIGKILL; return the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return int(proc.returncode)


def cli_command() -> list[str]:
    """How to run the ``snakepit-tasks`` console script of this environment."""
    script = Path(sys.executable).parent / "snakepit-tasks"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "snakepit_tasks"]


def run_cli(args: list[str], env: dict[str, str], pids: ProcessTracker,
            timeout: float = 120, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run ``snakepit-tasks ARGS`` to completion, tracking every process it starts."""
    proc = subprocess.Popen(
        [*cli_command(), *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    pids.track(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        terminate(proc, 10)
        out, err = proc.communicate()
        raise AssertionError(
            f"snakepit-tasks {' '.join(args)} did not finish in {timeout}s:\n{out}\n{err}"
        ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# -- nodes ---------------------------------------------------------------------------------
@dataclass
class NodeHandle:
    """A node started by the ``node`` fixture."""

    proc: subprocess.Popen[bytes]
    name: str
    pool: str
    table: dict[str, Any]
    log_path: Path
    redis_url: str
    tracker: ProcessTracker
    app: Any = None
    stopped_rc: int | None = field(default=None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        """Everything the node wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def workers(self) -> list[dict[str, Any]]:
        """This node's worker snapshots as published in Redis."""
        from snakepit_tasks import connections, pool_state

        r = connections.redis_client(self.redis_url)
        for node in pool_state.live_nodes(r, self.pool):
            if node["name"] == self.name:
                for w in node["workers"]:
                    if w.get("pid"):
                        self.tracker.record(int(w["pid"]))
                return list(node["workers"])
        return []

    def worker_ids(self) -> list[str]:
        return [w["id"] for w in self.workers()]

    def worker_pids(self) -> list[int]:
        """Pids of the ready workers, from Redis (each also recorded by the tracker)."""
        return [int(w["pid"]) for w in self.workers() if w["state"] == "ready" and w["pid"]]

    def child_pids(self) -> set[int]:
        """Processes below the node right now, from /proc (also recorded)."""
        pids = descendants(self.proc.pid)
        for pid in pids:
            self.tracker.record(pid)
        return pids

    def stop(self, timeout: float = NODE_STOP_TIMEOUT) -> int:
        """SIGTERM, wait, SIGKILL; return the exit code."""
        self.tracker.sample()
        self.stopped_rc = terminate(self.proc, timeout)
        return self.stopped_rc


def assert_served_by(node: NodeHandle, result: dict[str, Any], timeout: float = 15.0) -> int:
    """Assert ``result`` (with 'pid' and maybe 'worker_id') came from one of ``node``'s adapter
    processes: not this process, a child of the node, and a ready worker published in Redis."""
    pid = int(result["pid"])
    assert pid != os.getpid()
    assert pid != node.pid, "the tool ran inside the node process, not an adapter runtime"
    assert pid in node.child_pids(), f"pid {pid} is not a child of node {node.name}"
    wait_until(
        lambda: pid in node.worker_pids(),
        timeout=timeout,
        message=lambda: f"pid {pid} among the published workers of {node.name}: {node.workers()}",
    )
    if "worker_id" in result:
        assert result["worker_id"] in node.worker_ids()
        assert result["worker_id"].startswith(f"{node.name}/")
    assert "snakepit_tasks.bridge.runtime" in cmdline(pid)
    return pid


@contextlib.contextmanager
def sent_call_ids() -> Iterator[list[str]]:
    """The ids of the calls this process sends inside the block, in order (from the
    ``snakepit.call.sent`` telemetry event)."""
    from snakepit_tasks import telemetry

    ids: list[str] = []
    handler = f"sent-call-ids-{uuid.uuid4().hex[:8]}"
    telemetry.attach(handler, ("snakepit", "call", "sent"),
                     lambda event, m, md: ids.append(md["call_id"]))
    try:
        yield ids
    finally:
        telemetry.detach(handler)
