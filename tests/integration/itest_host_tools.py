"""Global host tools for the tool bridge tests: a pool's ``host_tools`` names them, and its
node imports them (made importable through the node's PYTHONPATH)."""

from __future__ import annotations

import hashlib
import os
from typing import Any


def calculate_hash(data: str) -> str:
    """SHA-256 of data, computed in the node"""
    return hashlib.sha256(data.encode()).hexdigest()


def node_pid() -> int:
    """The pid of the process this runs in"""
    return os.getpid()


def broken(**kwargs: Any) -> None:
    """Always raises"""
    raise LookupError("nothing here")
