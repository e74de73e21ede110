"""One call of a tool: the message every lane carries, written and validated once.

The caller builds it (:func:`Call.parse` with the caller's defaults), the Celery task carries
it as keyword arguments (:meth:`Call.to_kwargs`), and the node and the janitor read it back
with the same :func:`Call.parse`, so a message pushed into a queue by anything else is held to
the same rules as one sent through the API.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

from .config import AFFINITY_MODES, CAPABILITIES
from .errors import ConfigurationError, SerializationError

#: The Celery task that carries calls.
TASK_NAME = "snakepit.execute"
#: A command the node itself handles: run the adapter's ``cleanup_session`` on a worker.
CLEANUP_COMMAND = "__cleanup_session__"
MAX_SESSION_ID = 256
MAX_NAME = 256


@dataclass(frozen=True)
class Call:
    """A validated call. Fields after ``reply`` are set by routing, not by callers."""

    command: str
    args: dict[str, Any] = field(default_factory=dict)
    pool: str | None = None
    timeout: float | None = None
    deadline: float | None = None
    session_id: str | None = None
    stream: bool = False
    affinity: str | None = None
    reply: bool = False
    worker: str | None = None
    fallback: bool = False
    enqueued_at: float | None = None
    requires: tuple[str, ...] = ()  # capabilities the serving host must have ("cuda", ...)

    @classmethod
    def parse(
        cls,
        args: Any = None,
        kwargs: Any = None,
        *,
        default_pool: str | None = None,
        default_timeout_ms: int | None = None,
        streaming_timeout_ms: int | None = None,
        now: float | None = None,
    ) -> Call:
        """A call from task arguments (positional in field order, or keywords).

        Unknown or repeated fields, and values of the wrong type, raise SerializationError
        (ConfigurationError for an unknown affinity mode). Given defaults fill ``pool``,
        ``deadline`` and ``enqueued_at`` when the message has none.
        """
        values = {"command": None, **_fold(args, kwargs)}
        if values.get("args") is None:
            values["args"] = {}
        if values.get("requires") is None:
            values["requires"] = ()
        elif isinstance(values["requires"], list):  # as JSON carries it: no copy made later
            values["requires"] = tuple(values["requires"])
        call = cls(**values)
        call._validate()
        now = time.time() if now is None else now
        changes: dict[str, Any] = {}
        if not call.pool and default_pool:
            changes["pool"] = default_pool
        if not call.session_id and call.session_id is not None:
            changes["session_id"] = None
        if call.deadline is None and default_timeout_ms is not None:
            default_ms = streaming_timeout_ms if call.stream and streaming_timeout_ms else (
                default_timeout_ms
            )
            seconds = call.timeout if call.timeout is not None else default_ms / 1000
            changes["deadline"] = now + float(seconds)
        if call.enqueued_at is None and default_timeout_ms is not None:
            changes["enqueued_at"] = now
        if not isinstance(call.requires, tuple):
            changes["requires"] = tuple(call.requires)
        return dataclasses.replace(call, **changes) if changes else call

    def to_kwargs(self) -> dict[str, Any]:
        """The call as the task's keyword arguments (what travels in the message)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> Call:
        """A copy with ``changes`` (already-valid values: routing and the janitor use it)."""
        return dataclasses.replace(self, **changes)

    # -- validation ----------------------------------------------------------------------
    def _validate(self) -> None:
        _check_name("the tool name", self.command)
        if not isinstance(self.args, dict):
            raise SerializationError(
                f"arguments must be a dict of keyword arguments, got {type(self.args).__name__}",
                {"type": type(self.args).__name__},
            )
        if self.pool is not None and self.pool != "":
            _check_name("pool", self.pool)
        timeout_seconds(self.timeout, 0)
        for name in ("deadline", "enqueued_at"):
            value = getattr(self, name)
            if value is not None and not _finite_number(value):
                raise SerializationError(f"{name} must be epoch seconds, got {value!r}")
        if self.session_id is not None and self.session_id != "":
            if not isinstance(self.session_id, str) or len(self.session_id) > MAX_SESSION_ID:
                raise SerializationError(
                    f"session_id must be a string of at most {MAX_SESSION_ID} characters, "
                    f"got {_preview(self.session_id)}",
                    {"session_id": _preview(self.session_id)},
                )
            _check_printable("session_id", self.session_id)
        for name in ("stream", "reply", "fallback"):
            if not isinstance(getattr(self, name), bool):
                raise SerializationError(f"{name} must be true or false, got "
                                         f"{getattr(self, name)!r}")
        if self.affinity is not None and self.affinity not in AFFINITY_MODES:
            raise ConfigurationError(
                f"affinity must be one of {', '.join(AFFINITY_MODES)}, got "
                f"{_preview(self.affinity)}"
            )
        if self.worker is not None:
            _check_name("worker", self.worker)
        check_requires(self.requires)


FIELDS = tuple(f.name for f in dataclasses.fields(Call))


def check_requires(requires: Any) -> None:
    """Raise unless ``requires`` is a list of capability names (ConfigurationError for an
    unknown name, SerializationError for anything else)."""
    if isinstance(requires, (str, bytes)) or not isinstance(requires, (list, tuple)):
        raise SerializationError(
            f"requires must be a list of capability names, got {_preview(requires)}",
            {"requires": _preview(requires)},
        )
    for name in requires:
        if name not in CAPABILITIES:
            raise ConfigurationError(
                f"requires names an unknown capability {_preview(name)}; known: "
                f"{', '.join(CAPABILITIES)}",
                {"requires": _preview(requires), "known": list(CAPABILITIES)},
            )


def timeout_seconds(timeout: Any, default_ms: int) -> float:
    """A call's ``timeout`` in seconds, validated, or ``default_ms`` when it is None."""
    if timeout is None:
        return default_ms / 1000
    if not _positive_number(timeout):
        raise SerializationError(
            f"timeout must be a positive number of seconds, got {_preview(timeout)}",
            {"timeout": _preview(timeout)},
        )
    return float(timeout)


def _fold(args: Any, kwargs: Any) -> dict[str, Any]:
    """Positional task arguments folded into keywords; unknown or repeated ones rejected."""
    if args is not None and not isinstance(args, (list, tuple)):
        raise SerializationError(f"{TASK_NAME} takes a list of positional arguments, "
                                 f"got {type(args).__name__}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise SerializationError(f"{TASK_NAME} takes a dict of keyword arguments, "
                                 f"got {type(kwargs).__name__}")
    args = tuple(args or ())
    values = dict(kwargs or {})
    if len(args) > len(FIELDS):
        raise SerializationError(
            f"{TASK_NAME} takes at most {len(FIELDS)} positional arguments "
            f"({', '.join(FIELDS)}), got {len(args)}"
        )
    for name, value in zip(FIELDS, args, strict=False):
        if name in values:
            raise SerializationError(f"{TASK_NAME} got {name!r} twice")
        values[name] = value
    unknown = sorted(str(k) for k in set(values) - set(FIELDS))
    if unknown:
        raise SerializationError(
            f"{TASK_NAME} got unknown argument(s) {', '.join(_preview(u) for u in unknown)}; "
            f"it takes {', '.join(FIELDS)}"
        )
    return values


def _check_name(what: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise SerializationError(
            f"{what} must be a non-empty string, got {_preview(value)}",
            {"value": _preview(value)},
        )
    if len(value) > MAX_NAME:
        raise SerializationError(
            f"{what} is {len(value)} characters long; the limit is {MAX_NAME}",
            {"value": _preview(value)},
        )
    _check_printable(what, value)


def _check_printable(what: str, value: str) -> None:
    if not value.isprintable():
        raise SerializationError(
            f"{what} must not contain control characters (NUL, newline, ...): "
            f"{_preview(value)}",
            {"value": _preview(value)},
        )


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value
    )


def _positive_number(value: Any) -> bool:
    return _finite_number(value) and value > 0


def _preview(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
