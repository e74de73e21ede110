"""Every process the benchmark starts, and the one place that stops them all.

Children run in their own sessions (a Ctrl-C at the terminal reaches only the benchmark,
which then stops them in order) with output in per-process log files, shown on failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """A benchmark could not run (a process did not start, a call failed)."""


@dataclass
class Child:
    """One started process, its log, and pids it owns that outlive it if left alone."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    owned_pids: set[int] = field(default_factory=set)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _is_ours(pid: int, marker: str) -> bool:
    """Whether ``pid`` is still a process whose command line contains ``marker``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker.encode() in f.read()
    except OSError:
        return False


class Processes:
    """Starts children and guarantees they are stopped (:meth:`stop_all`, idempotent)."""

    def __init__(self) -> None:
        self.log_dir = Path(tempfile.mkdtemp(prefix="snakepit-bench-"))
        self.children: list[Child] = []
        self.keep_logs = False

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        env: dict[str, str],
        cwd: Path = ROOT,
    ) -> Child:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                list(cmd),
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 15.0) -> None:
        """SIGTERM (Celery's warm shutdown), then SIGKILL its group; reap its owned pids."""
        p = child.process
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        # Adapter runtimes live in their own sessions and die with their node (parent-death
        # signal, parent watch); make sure, but only for pids that still run the runtime.
        deadline = time.monotonic() + 3.0
        for pid in child.owned_pids:
            while _is_ours(pid, "snakepit_tasks.bridge.runtime") and time.monotonic() < deadline:
                time.sleep(0.05)
            if _is_ours(pid, "snakepit_tasks.bridge.runtime"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            try:
                self.stop(child, timeout=10.0)
            except Exception as exc:  # keep stopping the others
                print(f"bench: could not stop {child.name}: {exc!r}", file=sys.stderr)
        if self.keep_logs:
            print(f"bench: process logs kept in {self.log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.log_dir, ignore_errors=True)


@contextlib.contextmanager
def cleanup_on_signals() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP raise KeyboardInterrupt so ``finally`` blocks stop the children
    (SIGINT too: a shell starts background jobs with it ignored)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {
        s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ignore Ctrl-C/SIGTERM while cleaning up, so a second one cannot leave orphans."""
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in signals}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
