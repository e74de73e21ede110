"""Support for the tool bridge tests: a registrant in a separate OS process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from typing import Any

import helpers
from helpers import REPO, wait_until

REGISTRANT = textwrap.dedent("""
    import hashlib, os, sys, time
    import snakepit_tasks as sp

    sp.configure()
    session_id = sys.argv[1]

    def calculate_hash(data):
        return hashlib.sha256(data.encode()).hexdigest()

    def host_pid():
        return os.getpid()

    def slow(seconds=60):
        print("called", flush=True)
        time.sleep(seconds)
        return "late"

    sp.register_host_tool(session_id, "calculate_hash", calculate_hash)
    sp.register_host_tool(session_id, "host_pid", host_pid)
    sp.register_host_tool(session_id, "slow", slow)
    print("ready", os.getpid(), flush=True)
    sys.stdin.read()  # serve until the test closes stdin
""")


class Registrant:
    """A separate OS process that registers host tools for one session."""

    def __init__(self, redis_url: str, table: dict[str, Any], session_id: str,
                 pids: helpers.ProcessTracker) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", REGISTRANT, session_id], cwd=REPO,
            env=helpers.subprocess_env(redis_url, [table]), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        pids.record(self.proc.pid)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_until(lambda: any(x.startswith("ready") for x in self.lines), timeout=60,
                   message=lambda: f"the registrant to register its tools: {self.lines}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
