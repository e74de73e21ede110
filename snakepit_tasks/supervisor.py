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

from . import connections, keys, processes
from .config import PoolConfig, Settings

log = logging.getLogger("snakepit_tasks.supervisor")

#: A node that served this long before it died starts its backoff afresh (seconds).
STABLE_SECONDS = 30.0
#: Longest wait before a node is started again (seconds).
MAX_BACKOFF_SECONDS = 30.0
#: How much longer than ``graceful_shutdown_timeout_ms`` a node gets to stop before SIGKILL.
STOP_MARGIN_SECONDS = 10.0


@dataclass
class NodeSpec:
    """One node to run: its Celery node name, pool and worker count."""

    name: str
    pool: PoolConfig
    workers: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ready_at: float | None = None  # when its lease appeared: it serves
    failures: int = 0  # deaths in a row without a stable run
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


#: Celery's warning about running as root: shown only with the banner.
SUPERUSER_WARNING = "ignore:You're running the worker with superuser privileges"


def node_command(
    spec: NodeSpec, loglevel: str, settings: Settings, banner: bool | None = None
) -> list[str]:
    """The plain Celery command line that runs one node (systemd/Kubernetes use the same).
    Celery's banner shows when ``banner`` is true (default: at ``-l info`` and below)."""
    if banner is None:
        banner = loglevel.lower() in ("debug", "info")
    quiet = [] if banner else ["--quiet"]
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

    def __init__(
        self,
        settings: Settings,
        specs: list[NodeSpec],
        loglevel: str = "info",
        banner: bool | None = None,
    ) -> None:
        self.settings = settings
        self.specs = specs
        self.loglevel = loglevel
        self.banner = loglevel.lower() in ("debug", "info") if banner is None else banner
        self._stop = threading.Event()

    def _spawn(self, spec: NodeSpec) -> None:
        env = dict(os.environ, SNAKEPIT_PARENT_PID=str(os.getpid()))
        if not self.banner:  # Celery's superuser warning goes with its banner
            env["PYTHONWARNINGS"] = ",".join(
                w for w in (env.get("PYTHONWARNINGS", ""), SUPERUSER_WARNING) if w
            )
        spec.process = subprocess.Popen(
            node_command(spec, self.loglevel, self.settings, self.banner), env=env,
            stdin=subprocess.DEVNULL,
        )
        spec.started = time.monotonic()
        spec.ready_at = None
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
        if watched:
            processes.watch_parent(watched, self._starter_gone, interval=0.2)
        try:
            while not self._stop.wait(0.2):
                for spec in self.specs:
                    self._check(spec)
                if all(s.given_up for s in self.specs):
                    log.error("no node can start (their adapters cannot be imported)")
                    return processes.EXIT_ADAPTER_UNLOADABLE
        finally:
            self.stop_all()
        return 0

    def _starter_gone(self) -> None:
        log.warning("the process that started these nodes is gone; stopping")
        self._stop.set()

    def _check(self, spec: NodeSpec) -> None:
        """Restart a node that died, with backoff; tell a failed start from a crash."""
        if spec.given_up or spec.process is None:
            return
        if spec.process.poll() is None:
            if spec.ready_at is None and self._has_lease(spec):
                spec.ready_at = time.monotonic()
            return
        code = spec.process.returncode
        spec.history.append(code)
        if code == processes.EXIT_ADAPTER_UNLOADABLE:
            spec.given_up = True
            log.error("node %s (pool %r) cannot import its adapter %s (see above); not "
                      "restarting it: fix the adapter setting or PYTHONPATH",
                      spec.name, spec.pool.name, spec.pool.adapter)
            return
        # A node killed moments after it became ready may not have been seen serving yet;
        # its lease outlives it by up to node_lease_ttl_ms.
        served = spec.ready_at is not None or self._has_lease(spec)
        if served and time.monotonic() - (spec.ready_at or 0.0) >= STABLE_SECONDS:
            spec.failures = 0
        spec.failures += 1
        delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** (spec.failures - 1))
        what = "crashed" if served else "failed to start (never became ready)"
        log.warning("node %s %s with exit code %s; starting it again in %.1fs",
                    spec.name, what, code, delay)
        if self._stop.wait(delay):
            return
        self._spawn(spec)

    def _has_lease(self, spec: NodeSpec) -> bool:
        try:
            return bool(connections.redis_client(self.settings.redis_url).exists(
                keys.node_lease(spec.name)))
        except Exception:
            log.debug("could not read the lease of %s", spec.name, exc_info=True)
            return False

    def stop_all(self) -> None:
        """SIGTERM every node, wait for their graceful shutdown, SIGKILL what remains."""
        running = [s.process for s in self.specs if s.process is not None]
        grace = self.settings.graceful_shutdown_timeout_ms / 1000 + STOP_MARGIN_SECONDS
        for ending in processes.terminate_all(running, grace):
            if ending.killed:
                log.warning("node pid %s did not stop in %.0fs; killed it", ending.pid, grace)
