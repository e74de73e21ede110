"""Processes a test starts itself (``sleep``, small Python scripts), killed by pid at teardown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from snakepit_tasks.processes import ProcessIdentity

REPO = Path(__file__).resolve().parents[1]


class Spawned:
    """Starts processes; :meth:`close` kills each one that still runs, by pid.

    Children are killed through their ``Popen``; other processes (grandchildren a test learns
    of) are adopted by identity, so a recycled pid is never killed.
    """

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen[bytes]] = []
        self.others: list[ProcessIdentity] = []

    def python(self, code: str, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
        """``python -c code args...`` in the repository root, stdin closed."""
        return self.start([sys.executable, "-c", code, *args], **kw)

    def start(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        """``argv`` in the repository root, stdin closed; ``kw`` goes to ``Popen``."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, cwd=REPO, **kw)
        self.popens.append(proc)
        return proc

    def adopt(self, pid: int) -> ProcessIdentity:
        """Kill ``pid`` (not a child of this process) at teardown too, if it is still the
        same process."""
        ident = ProcessIdentity.of(pid)
        assert ident is not None, f"pid {pid} does not run"
        self.others.append(ident)
        return ident

    def close(self) -> None:
        for ident in self.others:
            if ident.is_running():
                os.kill(ident.pid, signal.SIGKILL)
        for proc in self.popens:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            if proc.stdout:
                proc.stdout.close()
