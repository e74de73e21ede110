"""Which host a process runs on, as far as sharing memory goes: the same kernel (boot id),
the same pid namespace (so ``/proc/<pid>`` names the producer) and the same host name."""

from __future__ import annotations

import functools
import hashlib
import os
import socket


@functools.lru_cache(maxsize=1)
def host_id() -> str:
    """A short id equal for two processes exactly when one can map the other's memory."""
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id",):
        try:
            with open(path) as f:
                parts.append(f.read().strip())
        except OSError:
            parts.append("")
    try:
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        parts.append("")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
