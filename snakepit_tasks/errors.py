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


ERROR_CLASSES: dict[str, type[SnakepitError]] = {
    cls.__name__: cls
    for cls in (
        SnakepitError,
        ConfigurationError,
        PoolNotFound,
        NoWorkersAvailable,
        ToolNotFound,
        AdapterError,
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
    )
}
