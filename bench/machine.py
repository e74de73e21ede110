"""What the figures were measured on: CPUs, load, Python, package versions, commit."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from typing import Any

import redis

from .procs import ROOT

PACKAGES = ("snakepit-tasks", "celery", "kombu", "redis", "grpcio", "protobuf")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT, capture_output=True, text=True, timeout=5, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info(redis_url: str) -> dict[str, Any]:
    """A description of this machine and software, for the JSON report."""
    try:
        server = redis.Redis.from_url(redis_url, socket_connect_timeout=2)
        redis_version = str(server.info("server").get("redis_version"))
        server.close()
    except redis.RedisError:
        redis_version = None
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "packages": {p: _version(p) for p in PACKAGES},
        "redis_server": redis_version,
        "commit": _commit(),
        "loadavg_start": list(os.getloadavg()),
    }
