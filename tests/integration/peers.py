"""Several nodes of one pool, and sessions on them: what the session and affinity tests share."""

from __future__ import annotations

import uuid
from typing import Any

import helpers
from helpers import wait_until

from snakepit_tasks import app as app_module


def configure(redis_url: str, *nodes: helpers.NodeHandle, **settings: Any) -> Any:
    """The process-wide caller app for these nodes' pools, with extra settings."""
    tables = list({n.pool: n.table for n in nodes}.values())
    return app_module.configure(redis_url=redis_url, pools=tables, **settings)


def start_peer(
    node: Any, first: helpers.NodeHandle, name: str, pool_size: int = 1, **fields: Any
) -> helpers.NodeHandle:
    """A second node of ``first``'s pool (the shared factory's own readiness wait configures
    an app with both tables, which is refused as a duplicate pool: wait here instead)."""
    peer = node(pool=first.pool, pool_size=pool_size, name=name, wait=False, **fields)
    wait_until(
        lambda: len(peer.worker_pids()) == pool_size,
        timeout=30,
        message=lambda: f"{pool_size} ready workers on {name}; its output:\n{peer.output()}",
    )
    peer.child_pids()
    return peer


def new_session() -> str:
    """A fresh session id."""
    return f"s-{uuid.uuid4().hex[:12]}"
