"""``snakepit-tasks worker``: start this host's nodes as Celery worker processes and keep
them running until SIGINT/SIGTERM, leaving no process behind."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from .config import PoolConfig, Settings

log = logging.getLogger("snakepit_tasks.supervisor")

FAILED_START_SECONDS = 10.0


@dataclass
class NodeSpec:
    """One node to run: its Celery node name, pool and worker count."""

    name: str
    pool: PoolConfig
    workers: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    given_up: bool = False
    history: list[int] = field(default_factory=list)


def node_specs(
    settings: Settings, pools: list[str] | None, host: str | None = None, name: str | None = None
) -> list[NodeSpec]:
    """The nodes this host runs for ``pools`` (all configured pools when empty)."""
    host = host or socket.gethostname()
    chosen = [settings.pool(p) for p in pools] if pools else list(settings.pools)
    suffix = f".{settings.instance_name}" if settings.instance_name else ""
    specs = []
    for pool in chosen:
        if pool.workers_per_node > 0:
            n_nodes = -(-pool.pool_size // pool.workers_per_node)
            for i in range(n_nodes):
                count = min(pool.workers_per_node, pool.pool_size - i * pool.workers_per_node)
                specs.append(NodeSpec(f"{pool.name}-{i}{suffix}@{host}", pool, count))
        else:
            node_name = name if (name and len(chosen) == 1) else f"{pool.name}{suffix}@{host}"
            specs.append(NodeSpec(node_name, pool, pool.pool_size))
    return specs


def node_command(spec: NodeSpec, loglevel: str, settings: Settings) -> list[str]:
    """The plain Celery command line that runs one node (systemd/Kubernetes use the same)."""
    quiet = ["--quiet"] if loglevel.lower() in ("warning", "error", "critical") else []
    cmd = [
        sys.executable, "-m", "celery", "-A", "snakepit_tasks.node.entry", *quiet, "worker",
        "-n", spec.name,
        "--snakepit-pool", spec.pool.name,
        "--snakepit-workers", str(spec.workers),
        "-l", loglevel,
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]
    if settings.task_events:
        cmd.append("-E")
    return cmd


class Supervisor:
    """Runs node processes; restarts one that dies; stops all on a signal."""

    def __init__(self, settings: Settings, specs: list[NodeSpec], loglevel: str = "info") -> None:
        self.settings = settings
        self.specs = specs
        self.loglevel = loglevel
        self._stop = threading.Event()

    def _spawn(self, spec: NodeSpec) -> None:
        env = dict(os.environ, SNAKEPIT_PARENT_PID=str(os.getpid()))
        spec.process = subprocess.Popen(
            node_command(spec, self.loglevel, self.settings), env=env, stdin=subprocess.DEVNULL
        )
        spec.started = time.monotonic()
        log.info("started node %s (pid %s)", spec.name, spec.process.pid)

    def request_stop(self, *_: object) -> None:
        """Ask the supervisor to stop (signal handler)."""
        self._stop.set()

    def run(self) -> int:
        """Supervise until stopped; return the exit code."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        for spec in self.specs:
            self._spawn(spec)
        # Started by a demo or a script: stop when that process dies, however it dies.
        watched = int(os.environ.get("SNAKEPIT_WATCH_PID", "0") or 0)
        try:
            while not self._stop.wait(0.2):
                if watched and os.getppid() != watched:
                    log.warning("the process that started these nodes is gone; stopping")
                    break
                for spec in self.specs:
                    self._check(spec)
                if all(s.given_up for s in self.specs):
                    log.error("every node failed to start; giving up")
                    return 1
        finally:
            self.stop_all()
        return 0

    def _check(self, spec: NodeSpec) -> None:
        if spec.given_up or spec.process is None or spec.process.poll() is None:
            return
        code = spec.process.returncode
        quick = time.monotonic() - spec.started < FAILED_START_SECONDS
        spec.failures = spec.failures + 1 if quick else 0
        if spec.failures > self.settings.worker_starter_max_restarts:
            spec.given_up = True
            log.error(
                "node %s (pool %r) failed to start %d times (last exit code %s); not retrying. "
                "See its log above.", spec.name, spec.pool.name, spec.failures, code,
            )
            return
        delay = min(10.0, 0.5 * 2**spec.failures) if quick else 0.5
        log.warning("node %s exited with code %s; restarting in %.1fs", spec.name, code, delay)
        if self._stop.wait(delay):
            return
        self._spawn(spec)

    def stop_all(self) -> None:
        """SIGTERM every node, wait for their graceful shutdown, SIGKILL what remains."""
        running = [s.process for s in self.specs if s.process and s.process.poll() is None]
        for p in running:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.graceful_shutdown_timeout_ms / 1000 + 10
        for p in running:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("node pid %s did not stop in time; killing it", p.pid)
                p.kill()
                p.wait(5)
