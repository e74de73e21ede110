"""Sessions: which worker holds a caller's state. Inspect, list and end them.

A session is bound by the node whose worker runs its first call (see broker/start_call.lua);
later calls follow it there according to the pool's affinity mode.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from celery import Celery

from . import connections, keys, session_store
from .app import default_app
from .call import CLEANUP_COMMAND, TASK_NAME, Call
from .caller import wait
from .host_tools import registry as host_tools
from .queues import declare_queue

__all__ = ["CLEANUP_COMMAND", "delete", "get", "list_sessions", "unbind"]

unbind = session_store.unbind


def _redis(app: Celery | None) -> redis.Redis:
    return connections.redis_client((app or default_app()).snakepit_settings.redis_url)


def get(session_id: str, *, app: Celery | None = None) -> dict[str, Any] | None:
    """The session's binding (worker, node, pool, created, last_used, ttl), or None."""
    return session_store.get(_redis(app), session_id)


def list_sessions(pool: str | None = None, *, app: Celery | None = None) -> list[dict[str, Any]]:
    """Live sessions, most recently used first (optionally only those of ``pool``)."""
    return session_store.list_sessions(_redis(app), pool)


def delete(session_id: str, *, app: Celery | None = None, timeout: float = 10.0) -> bool:
    """End a session: run the adapter's session cleanup on its worker, then forget it and
    its host tools.

    Returns False when the session did not exist.
    """
    the_app = app or default_app()
    r = _redis(the_app)
    host_tools.forget_session(r, session_id)
    info = session_store.get(r, session_id)
    if info is None:
        return False
    node = info.get("node")
    if node and r.exists(keys.node_lease(node)):
        # Sent by name: the node runs the adapter's cleanup_session on the bound worker.
        call = Call(
            command=CLEANUP_COMMAND,
            pool=info.get("pool"),
            session_id=session_id,
            worker=info.get("worker"),
            deadline=time.time() + timeout,
        )
        result = the_app.send_task(
            TASK_NAME, kwargs=call.to_kwargs(), queue=declare_queue(keys.node_queue(node))
        )
        try:
            wait(result, timeout + 5)
        finally:
            session_store.unbind(r, session_id)
    else:
        session_store.unbind(r, session_id)
    return True
