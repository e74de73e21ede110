"""Checks an adapter can be loaded, in a fresh interpreter (as a worker would)."""

from __future__ import annotations

import subprocess
import sys

from .node.worker import worker_env


def check_adapter(spec: str, timeout: float = 30.0) -> str | None:
    """None if ``module:Class`` loads as an adapter, else the error text."""
    code = (
        "import sys\n"
        "from snakepit_tasks.bridge.runtime import load_adapter\n"
        f"load_adapter({spec!r})\n"
    )
    import os

    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=worker_env(dict(os.environ), "process", {}),
    )
    if proc.returncode == 0:
        return None
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {proc.returncode}"
