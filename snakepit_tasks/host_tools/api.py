"""Registering host tools: Python functions of this process that adapters call by name.

    import snakepit_tasks as sp

    @sp.host_tool("user-7", description="SHA-256 of a string")
    def calculate_hash(data: str) -> str:
        return hashlib.sha256(data.encode()).hexdigest()

    sp.execute_in_session("user-7", "hash_via_host", {"data": "abc"})

The function runs in this process (see :mod:`.listener`); it is offered to adapter calls of
that session until it is unregistered, the session ends, or this process exits.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery

from .. import connections
from ..app import default_app
from ..errors import ToolRegistrationError
from . import listener, registry
from .spec import (
    HostToolSpec,
    check_description,
    check_metadata,
    check_name,
    check_session_id,
)

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "HostToolSpec",
    "host_tool",
    "list_host_tools",
    "register_host_tool",
    "unregister_host_tool",
]


def register_host_tool(
    session_id: str,
    name: str,
    fn: Callable[..., Any],
    *,
    description: str = "",
    exposed: bool = True,
    metadata: dict[str, Any] | None = None,
    app: Celery | None = None,
) -> HostToolSpec:
    """Offer ``fn`` to the adapter calls of session ``session_id`` as host tool ``name``.

    Adapters call it with keyword arguments (``self.session_context.call_host_tool(name,
    {...})``); it runs in this process, which must keep running to serve it. ``exposed=False``
    keeps it out of the adapters' sight. Raises ToolRegistrationError for a bad name (letters,
    digits, ``_ - .``, at most 64 bytes), bad metadata (a JSON dict of at most 32 entries and
    4 KB), or a name already registered in the session.
    """
    check_session_id(session_id)
    check_name(name)
    if not callable(fn):
        raise ToolRegistrationError(
            f"host tool {name!r}: expected a callable, got {type(fn).__name__}",
            {"reason": "not_callable", "name": name},
        )
    if not isinstance(exposed, bool):
        raise ToolRegistrationError(f"host tool {name!r}: exposed must be True or False")
    spec = HostToolSpec(
        name=name,
        description=check_description(description or _first_doc_line(fn)),
        metadata=check_metadata(metadata),
        exposed=exposed,
    )
    settings = (app or default_app()).snakepit_settings
    r = connections.redis_client(settings.redis_url)
    with connections.redis_errors_as_snakepit(f"registering host tool {name!r}"):
        served_by = listener.listener_for(
            settings.redis_url, r, settings.node_lease_ttl_ms, settings.node_lease_interval_ms
        )
        # Known here before the record exists, so a call right after registering finds it;
        # put back as it was if the name is taken (by this process too).
        previous = served_by.get(session_id, name)
        served_by.add(session_id, name, fn)
        try:
            registry.register(
                r, session_id, spec, served_by.registrant, settings.session_default_ttl * 1000
            )
        except BaseException:
            if previous is None:
                served_by.discard(session_id, name)
            else:
                served_by.add(session_id, name, previous)
                served_by.confirm(session_id, name)
            raise
        served_by.confirm(session_id, name)
    return spec


def host_tool(
    session_id: str,
    *,
    name: str | None = None,
    description: str = "",
    exposed: bool = True,
    metadata: dict[str, Any] | None = None,
    app: Celery | None = None,
) -> Callable[[F], F]:
    """Decorator form of :func:`register_host_tool` (the name defaults to the function's);
    registers at once and returns the function unchanged."""

    def register(fn: F) -> F:
        register_host_tool(
            session_id, name or str(getattr(fn, "__name__", "")), fn, description=description,
            exposed=exposed, metadata=metadata, app=app,
        )
        return fn

    return register


def unregister_host_tool(session_id: str, name: str, *, app: Celery | None = None) -> bool:
    """Stop offering host tool ``name`` to session ``session_id`` (whichever process
    registered it); False when it was not registered."""
    check_session_id(session_id)
    check_name(name)
    settings = (app or default_app()).snakepit_settings
    r = connections.redis_client(settings.redis_url)
    mine = listener.existing(settings.redis_url)
    if mine is not None:
        mine.discard(session_id, name)
    with connections.redis_errors_as_snakepit(f"unregistering host tool {name!r}"):
        return registry.remove(r, session_id, name)


def list_host_tools(session_id: str, *, app: Celery | None = None) -> list[HostToolSpec]:
    """The host tools registered for ``session_id`` by live processes, exposed or not, by
    name (the pool's global tools are listed by adapters, which know their pool)."""
    check_session_id(session_id)
    settings = (app or default_app()).snakepit_settings
    r = connections.redis_client(settings.redis_url)
    with connections.redis_errors_as_snakepit("listing host tools"):
        records = registry.live_records(r, session_id)
    return [registry.spec_of(records[n]) for n in sorted(records)]


def _first_doc_line(fn: Callable[..., Any]) -> str:
    return (inspect.getdoc(fn) or "").split("\n")[0]
