"""A node: the Celery worker process that hosts one pool's workers on this host."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import string
import threading
import time
from typing import Any

from .. import state
from ..config import PoolConfig, Settings
from ..errors import SnakepitError
from ..streaming.writer import ChunkWriter
from .worker import AdapterWorker
from .workerset import WorkerSet

log = logging.getLogger("snakepit_tasks.node")

_ALPHABET = string.ascii_lowercase + string.digits


def new_run_id() -> str:
    """A short random id for one run of a node (7 base-36 characters)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(7))


class Node:
    """Owns the workers of a node and tells Redis about them."""

    def __init__(
        self, settings: Settings, pool: PoolConfig, name: str, count: int | None = None
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.name = name
        self.run_id = new_run_id()
        self.started_at = time.time()
        self.redis = state.redis_client(settings.redis_url)
        self.workers = WorkerSet(
            settings,
            pool,
            name,
            count=count,
            run_id=self.run_id,
            instance=settings.instance_name,
            on_exit=self._worker_exited,
        )
        self.lease = state.NodeLease(
            self.redis,
            name,
            pool.name,
            settings.node_lease_ttl_ms,
            settings.node_lease_interval_ms,
            self._describe,
        )
        self._shutdown_timer: threading.Timer | None = None

    def start(self) -> None:
        """Start the workers (ready before this returns), then publish the lease."""
        started = time.monotonic()
        self.workers.start()
        log.info(
            "node %s: %d %s worker(s) of %s ready in %.0f ms",
            self.name,
            len(self.workers.workers),
            self.pool.worker_profile,
            self.pool.adapter,
            (time.monotonic() - started) * 1000,
        )
        self.lease.start()

    def begin_shutdown(self) -> None:
        """Celery is shutting down: give calls in flight the grace period, then kill."""
        grace = self.settings.graceful_shutdown_timeout_ms / 1000
        self._shutdown_timer = threading.Timer(grace, self.workers.kill_all)
        self._shutdown_timer.daemon = True
        self._shutdown_timer.start()

    def stop(self) -> None:
        """Withdraw the lease and stop every worker."""
        if self._shutdown_timer:
            self._shutdown_timer.cancel()
        self.lease.stop()
        self.workers.stop()

    def call(self, command: str, args: Any, *, deadline: float, call_id: str = "",
             session_id: str = "") -> Any:
        """Run one call on this node's workers, counting it in the pool's stats."""
        error = 0
        try:
            return self.workers.call(
                command, args, deadline=deadline, call_id=call_id, session_id=session_id
            )
        except SnakepitError:
            error = 1
            raise
        finally:
            try:
                state.count(self.redis, self.pool.name, requests=1, errors=error)
            except Exception:  # counters must never fail a call
                log.debug("could not count call", exc_info=True)

    def call_stream(self, command: str, args: Any, *, deadline: float, call_id: str,
                    session_id: str = "") -> Any:
        """Run a streaming call: chunks go to the call's Redis stream, then a final entry."""
        writer = ChunkWriter(
            self.redis,
            call_id,
            max_len=self.settings.stream_max_len,
            retention=self.settings.stream_retention,
            ttl=int(max(0.0, deadline - time.time())) + self.settings.stream_retention,
        )
        error = 0
        try:
            result = self.workers.call_stream(
                command,
                args,
                deadline=deadline,
                on_chunk=writer.put,
                cancelled=writer.cancelled,
                call_id=call_id,
                session_id=session_id,
            )
        except SnakepitError as exc:
            error = 1
            writer.fail(exc)
            raise
        except BaseException as exc:
            error = 1
            writer.fail(SnakepitError(f"streaming call failed on the node: {exc!r}"))
            raise
        else:
            writer.finish(result)
            return result
        finally:
            try:
                state.count(self.redis, self.pool.name, requests=1, errors=error)
            except Exception:
                log.debug("could not count call", exc_info=True)

    def _describe(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        fields = {
            "pool": self.pool.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "run_id": self.run_id,
            "instance": self.settings.instance_name,
            "started_at": self.started_at,
            "capacity": self.workers.capacity,
            "adapter": self.pool.adapter,
            "profile": self.pool.worker_profile,
        }
        return fields, self.workers.snapshot()

    def _worker_exited(self, worker: AdapterWorker, how: str) -> None:
        try:
            self.lease.publish()
        except Exception:
            log.debug("could not publish lease", exc_info=True)
