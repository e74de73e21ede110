"""Checks an adapter can be loaded, in a fresh interpreter (as a worker would)."""

from __future__ import annotations

import subprocess
import sys

from .worker import worker_env


def check_adapter(
    spec: str,
    timeout: float = 30.0,
    *,
    adapter_env: dict[str, str] | None = None,
    profile: str = "process",
) -> str | None:
    """None if ``module:Class`` loads as an adapter the way a worker of a pool with this
    ``profile`` and ``adapter_env`` would load it, else the error text."""
    code = (
        "import sys\n"
        "from snakepit_tasks.bridge.runtime import load_adapter\n"
        f"cls = load_adapter({spec!r})\n"
    )
    if profile == "thread":
        code += (
            "if not getattr(cls, '__thread_safe__', False):\n"
            "    sys.exit('TypeError: not thread-safe, but the pool uses the thread profile: "
            "subclass ThreadSafeAdapter or set __thread_safe__ = True')\n"
        )
    import os

    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=worker_env(dict(os.environ), profile, adapter_env or {}),
    )
    if proc.returncode == 0:
        return None
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {proc.returncode}"
