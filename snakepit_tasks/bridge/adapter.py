"""The adapter SDK: a class whose ``@tool`` methods are what callers execute by name."""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ..errors import SnakepitError
from ..host_tools.spec import HostToolSpec, merge_arguments

if TYPE_CHECKING:
    from .host_client import HostToolsClient

F = TypeVar("F", bound=Callable[..., Any])

_TOOL_ATTR = "__snakepit_tool__"


@dataclass(frozen=True)
class ToolSpec:
    """What a caller can know about a tool without importing the adapter."""

    name: str
    description: str = ""
    supports_streaming: bool = False
    idempotent: bool = False
    parameters: tuple[tuple[str, str, bool], ...] = ()  # (name, annotation, required)


@dataclass
class SessionContext:
    """What a tool knows about the call it serves, and its way to the host tools.

    Host tools are functions registered with ``snakepit_tasks.register_host_tool`` for this
    call's session (they run in the registering process, maybe on another machine) or named
    in the pool's ``host_tools`` (they run in the node). Only exposed tools are visible.
    """

    session_id: str = ""
    worker_id: str = ""
    call_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    deadline: float | None = None  # epoch seconds by which the call must end
    host_client: HostToolsClient | None = field(default=None, repr=False, compare=False)

    def call_host_tool(self, name: str, args: dict[str, Any] | None = None, /,
                       **kwargs: Any) -> Any:
        """Run host tool ``name`` with keyword arguments given as a dict, as keywords, or
        both; its result. Raises ToolNotFound (naming the session and the tools it has),
        HostToolError (the host function raised: ``.type``, message, ``.traceback``),
        ExecutionTimeout (no answer within ``host_tool_timeout_ms`` or the call's deadline,
        or the registering process went away), SerializationError."""
        return self._client().call(
            name, merge_arguments(name, args, kwargs), session_id=self.session_id,
            call_id=self.call_id, deadline=self.deadline,
        )

    def list_host_tools(self) -> list[HostToolSpec]:
        """The host tools this call may use (name, description, metadata, scope)."""
        return self._client().list(self.session_id, self.deadline)

    @property
    def host_tools(self) -> HostTools:
        """``host_tools[name](**kwargs)`` calls a host tool; ``name in host_tools`` and
        iteration list them."""
        return HostTools(self)

    def _client(self) -> HostToolsClient:
        if self.host_client is None:
            raise SnakepitError(
                "host tools are not available here: this adapter was not started by a node "
                "(its runtime has no --host-tools-socket)"
            )
        return self.host_client


class HostTools:
    """Host tools as a mapping of callables: ``host_tools["calculate_hash"](data="x")``."""

    def __init__(self, context: SessionContext) -> None:
        self._context = context

    def __getitem__(self, name: str) -> Callable[..., Any]:
        def call(**kwargs: Any) -> Any:
            return self._context.call_host_tool(name, kwargs)

        call.__name__ = call.__qualname__ = name
        return call

    def __contains__(self, name: object) -> bool:
        return any(spec.name == name for spec in self._context.list_host_tools())

    def __iter__(self) -> Iterator[str]:
        return iter([spec.name for spec in self._context.list_host_tools()])


@overload
def tool(fn: F) -> F: ...


@overload
def tool(
    fn: None = None,
    *,
    description: str = "",
    supports_streaming: bool = False,
    idempotent: bool = False,
    name: str | None = None,
) -> Callable[[F], F]: ...


def tool(
    fn: F | None = None,
    *,
    description: str = "",
    supports_streaming: bool = False,
    idempotent: bool = False,
    name: str | None = None,
) -> F | Callable[[F], F]:
    """Mark an adapter method as a tool callers may execute by name.

    ``idempotent=True`` allows a re-run on another worker when the process crashes.
    A generator tool streams; mark it ``supports_streaming=True``.
    """

    def mark(method: F) -> F:
        streaming = supports_streaming or inspect.isgeneratorfunction(method) or (
            inspect.isasyncgenfunction(method)
        )
        setattr(
            method,
            _TOOL_ATTR,
            {
                "name": name or method.__name__,
                "description": description or (inspect.getdoc(method) or "").split("\n")[0],
                "supports_streaming": streaming,
                "idempotent": idempotent,
            },
        )
        return method

    return mark(fn) if fn is not None else mark


def _parameters(method: Callable[..., Any]) -> tuple[tuple[str, str, bool], ...]:
    params = []
    for p in list(inspect.signature(method).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.annotation is p.empty:
            annotation = ""
        elif isinstance(p.annotation, str):  # postponed (``from __future__ import annotations``)
            annotation = p.annotation
        else:
            annotation = inspect.formatannotation(p.annotation)
        params.append((p.name, annotation, p.default is p.empty))
    return tuple(params)


class BaseAdapter:
    """Base class for adapters.

    A new instance serves each call: ``initialize()`` runs before the tool and ``cleanup()``
    after it, always. State that must outlive a call belongs at module level (it lives as long
    as the worker process).
    """

    __thread_safe__ = False

    session_context: SessionContext

    def __init__(self) -> None:
        self.session_context = SessionContext()

    def initialize(self) -> None:
        """Prepare for one call (runs before the tool)."""

    def cleanup(self) -> None:
        """Release what :meth:`initialize` took (runs after the tool, even when it raised)."""

    @classmethod
    def tools(cls) -> dict[str, ToolSpec]:
        """The tools this adapter serves, by name."""
        found: dict[str, ToolSpec] = {}
        for attr in dir(cls):
            method = getattr(cls, attr, None)
            meta = getattr(method, _TOOL_ATTR, None)
            if meta is None or method is None:
                continue
            found[meta["name"]] = ToolSpec(parameters=_parameters(method), **meta)
        return found

    @classmethod
    def tool_method_name(cls, tool_name: str) -> str | None:
        """The attribute that implements ``tool_name``, or None."""
        for attr in dir(cls):
            meta = getattr(getattr(cls, attr, None), _TOOL_ATTR, None)
            if meta is not None and meta["name"] == tool_name:
                return attr
        return None


class ThreadSafeAdapter(BaseAdapter):
    """Base class for adapters served by the ``thread`` profile (many calls at once).

    Shared state goes through :meth:`acquire_lock` or :func:`thread_safe_method`;
    per-thread scratch space lives in :attr:`thread_local`.
    """

    __thread_safe__ = True
    _class_lock = threading.RLock()
    thread_local = threading.local()

    @contextlib.contextmanager
    def acquire_lock(self) -> Iterator[None]:
        """Hold the adapter-wide lock for a block of code."""
        with type(self)._class_lock:
            yield


def thread_safe_method(method: F) -> F:
    """Run the method under the adapter-wide lock of its :class:`ThreadSafeAdapter`."""

    @functools.wraps(method)
    def locked(self: ThreadSafeAdapter, *args: Any, **kwargs: Any) -> Any:
        with self.acquire_lock():
            return method(self, *args, **kwargs)

    return locked  # type: ignore[return-value]
