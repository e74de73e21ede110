"""A Ray actor whose ``ping`` method does what the showcase ``ping`` tool does: the reference
for a session-bound call (a call to one long-lived stateful process).

Ray is optional (``pip install -e '.[bench]'``): without it :func:`start` returns None and
the report says "ray not installed". Ray runs locally with one CPU and no dashboard, and is
always shut down (:meth:`RayActor.stop`), its processes with it, and its temporary folder
removed.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import tempfile
import time
from typing import Any

from .procs import BenchError
from .systems import Target


class RayActor:
    """A local Ray instance with one actor; :meth:`target` times ``actor.ping.remote()``."""

    def __init__(self, ray: Any, actor: Any, temp_dir: str) -> None:
        self.ray = ray
        self.actor = actor
        self.temp_dir = temp_dir
        self.pid: int | None = None

    def target(self) -> Target:
        ray, method = self.ray, self.actor.ping

        def call() -> Any:
            result = ray.get(method.remote(), timeout=30)
            if not (isinstance(result, dict) and result.get("status") == "pong"):
                raise BenchError(f"Ray actor ping answered {result!r}")
            return result

        return Target("ray_actor", "Ray actor method call ping()", call)

    def stop(self) -> None:
        """Kill the actor and shut Ray down (its raylet, GCS and workers end with it)."""
        with contextlib.suppress(Exception):
            self.ray.kill(self.actor)
        self.ray.shutdown()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def start(timeout: float = 120.0) -> RayActor | None:
    """Start local Ray (1 CPU, no dashboard) and one actor; None when Ray is not installed."""
    try:
        ray: Any = importlib.import_module("ray")  # untyped use: Ray's stubs vary by version
    except ImportError:
        return None

    class Pinger:
        def ping(self) -> dict[str, Any]:
            return {"status": "pong", "pid": os.getpid()}

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Its sessions' logs and sockets in a folder of this run's, removed at the end.
    temp_dir = tempfile.mkdtemp(prefix="spb-ray-")
    ray.init(
        _temp_dir=temp_dir,
        num_cpus=1,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        configure_logging=True,
        object_store_memory=80 * 1024 * 1024,
        _system_config={"metrics_report_interval_ms": 0},
    )
    try:
        actor = ray.remote(num_cpus=0)(Pinger).remote()
        deadline = time.monotonic() + timeout
        result = None
        while result is None:
            try:
                result = ray.get(actor.ping.remote(), timeout=5)
            except ray.exceptions.GetTimeoutError:
                if time.monotonic() > deadline:
                    raise BenchError("the Ray actor did not answer in time") from None
        handle = RayActor(ray, actor, temp_dir)
        handle.pid = result.get("pid")
        return handle
    except BaseException:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
