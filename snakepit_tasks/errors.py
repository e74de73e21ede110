"""The exceptions snakepit-tasks raises; all derive from :class:`SnakepitError`.

Every error takes ``(message, details)`` positionally so that it crosses Celery's result
backend (which rebuilds an exception from its ``args``) as the same class with the same data.
"""

from __future__ import annotations

from typing import Any


class SnakepitError(Exception):
    """Root of every snakepit-tasks error."""

    def __init__(self, message: str = "", details: dict[str, Any] | None = None) -> None:
        super().__init__(message, dict(details or {}))
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.details))


class ConfigurationError(SnakepitError):
    """The settings are invalid: an unknown key, a bad value, a missing adapter."""


class PoolNotFound(SnakepitError):
    """No pool of that name is configured or served by any node."""


class NoWorkersAvailable(SnakepitError):
    """The pool is known but no live node serves it right now."""


class ToolNotFound(SnakepitError):
    """The adapter has no tool of that name; ``details['available']`` lists those it has."""


class AdapterError(SnakepitError):
    """The tool raised. ``type``, ``message`` and ``traceback`` come from the adapter process."""

    @property
    def type(self) -> str:
        return str(self.details.get("type", ""))

    @property
    def traceback(self) -> str:
        return str(self.details.get("traceback", ""))


class HostToolError(AdapterError):
    """A host tool (a function registered with ``register_host_tool``) raised. Raised in the
    adapter that called it; ``type``, ``message`` and ``traceback`` come from the host."""


class ToolRegistrationError(SnakepitError):
    """A host tool cannot be registered: a bad name, bad metadata, a duplicate name in the
    session (``details['reason']`` says which), or a function that is not callable."""


class WorkerBusy(SnakepitError):
    """The session's worker is busy and the affinity mode forbids waiting or moving."""


class SessionWorkerUnavailable(SnakepitError):
    """The session's worker is tainted or gone and the affinity mode is strict."""


class SessionQuotaExceeded(SnakepitError):
    """``session_max_sessions`` sessions exist already; end some or raise the limit."""


class WorkerCrashed(SnakepitError):
    """The adapter process died while serving the call."""


class CircuitOpen(SnakepitError):
    """The circuit breaker is open; the call was not sent."""


class QueueFull(SnakepitError):
    """Too many calls are already waiting for this pool (``pool_max_queue_size``)."""


class QueueTimeout(SnakepitError):
    """The call waited ``pool_queue_timeout`` for a worker and was not run."""


class ExecutionTimeout(SnakepitError):
    """The call did not finish within its timeout."""


class StreamTruncated(SnakepitError):
    """Chunks of a stream were trimmed before this reader got them (it attached too late or
    fell more than ``stream_max_len`` chunks behind without a live reader's backpressure)."""


class RedisUnavailable(SnakepitError):
    """Redis (state, broker or result backend) could not be reached; the call's fate is
    unknown if it was already sent."""


class SerializationError(SnakepitError):
    """A value could not be encoded or decoded."""


class DeadLettered(SnakepitError):
    """The node could not decode or accept the call's message; it was moved to the dead-letter
    list instead of being run."""


class DeviceNotAvailable(SnakepitError):
    """The requested device (``cuda``, ``mps``, ``rocm`` ...) is not present on this host."""


class NoDevice(SnakepitError):
    """None of the devices in a fallback list is available."""


ERROR_CLASSES: dict[str, type[SnakepitError]] = {
    cls.__name__: cls
    for cls in (
        SnakepitError,
        ConfigurationError,
        PoolNotFound,
        NoWorkersAvailable,
        ToolNotFound,
        AdapterError,
        HostToolError,
        ToolRegistrationError,
        WorkerBusy,
        SessionWorkerUnavailable,
        SessionQuotaExceeded,
        WorkerCrashed,
        CircuitOpen,
        QueueFull,
        QueueTimeout,
        ExecutionTimeout,
        RedisUnavailable,
        StreamTruncated,
        SerializationError,
        DeadLettered,
        DeviceNotAvailable,
        NoDevice,
    )
}


def to_wire(error: BaseException) -> dict[str, Any]:
    """The wire form of an error: ``{"class", "message", "details"}``, JSON-encodable.

    A project error keeps its class (or its nearest registered base class); any other
    exception becomes a :class:`SnakepitError` naming the original type.
    """
    if isinstance(error, SnakepitError):
        cls: type[BaseException] = type(error)
        while cls.__name__ not in ERROR_CLASSES or ERROR_CLASSES[cls.__name__] is not cls:
            cls = cls.__mro__[1]
        return {"class": cls.__name__, "message": error.message, "details": error.details}
    return {
        "class": "SnakepitError",
        "message": f"{type(error).__name__}: {error}",
        "details": {"type": type(error).__name__},
    }


def from_wire(body: Any, default_message: str = "call failed") -> SnakepitError:
    """The error an error's wire form describes, as its original class."""
    if not isinstance(body, dict):
        return SnakepitError(f"{default_message}: {body!r}")
    cls = ERROR_CLASSES.get(str(body.get("class", "")), SnakepitError)
    details = body.get("details")
    return cls(str(body.get("message") or default_message),
               details if isinstance(details, dict) else {})

