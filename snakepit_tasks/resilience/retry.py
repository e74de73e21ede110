"""Retry a call with a backoff sequence and jitter (the original snakepit's RetryPolicy).

The delay after failed attempt *n* (1-based) is ``backoff_ms[n - 1]``, the last value repeating
once the sequence runs out, capped at ``max_backoff_ms``, then moved by up to ±``jitter`` of
itself (uniformly) and capped again. ``max_attempts`` counts every attempt, the first included.

Only errors in ``retriable_errors`` are retried; the default set is the original's (timeouts,
unavailable, connection refused, worker crash). Retrying re-runs the call: a call that failed
with WorkerCrashed or ExecutionTimeout may already have had its effects, so retry those only
for idempotent tools, or pass ``retriable_errors=NEVER_RAN_ERRORS`` (errors that guarantee the
call never ran). :class:`CircuitOpen` is never retried.
"""

from __future__ import annotations

import logging
import random as random_module
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .. import telemetry
from ..config import Settings
from ..errors import (
    CircuitOpen,
    ConfigurationError,
    ExecutionTimeout,
    NoWorkersAvailable,
    QueueTimeout,
    WorkerCrashed,
)
from .circuit_breaker import CONNECTION_ERRORS

log = logging.getLogger("snakepit_tasks.resilience")

T = TypeVar("T")

RETRIABLE_ERRORS: tuple[type[BaseException], ...] = (
    WorkerCrashed,
    ExecutionTimeout,
    QueueTimeout,
    NoWorkersAvailable,
    *CONNECTION_ERRORS,
)
"""What :class:`RetryPolicy` retries by default."""

NEVER_RAN_ERRORS: tuple[type[BaseException], ...] = (QueueTimeout, NoWorkersAvailable)
"""Errors after which the call certainly did not run: safe to retry for any tool."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long apart to retry a failing call.

    ``sleep`` (seconds) and ``random`` (a float in [0, 1)) are injectable for tests.
    """

    max_attempts: int = 3
    backoff_ms: tuple[float, ...] = (100, 200, 400, 800, 1600)
    max_backoff_ms: float = 30_000
    jitter: float = 0.25
    retriable_errors: tuple[type[BaseException], ...] = RETRIABLE_ERRORS
    sleep: Callable[[float], Any] = field(default=time.sleep, repr=False, compare=False)
    random: Callable[[], float] = field(default=random_module.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "backoff_ms", tuple(self.backoff_ms))
        object.__setattr__(self, "retriable_errors", tuple(self.retriable_errors))
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or (
            self.max_attempts < 1
        ):
            raise ConfigurationError(
                f"retry max_attempts must be an integer >= 1, got {self.max_attempts!r}"
            )
        if not self.backoff_ms or any(b < 0 for b in self.backoff_ms):
            raise ConfigurationError(
                f"retry backoff_ms must be a non-empty sequence of delays >= 0, got "
                f"{self.backoff_ms!r}"
            )
        if self.max_backoff_ms < 0:
            raise ConfigurationError(
                f"retry max_backoff_ms must be >= 0, got {self.max_backoff_ms}"
            )
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"retry jitter must be between 0 and 1, got {self.jitter}")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> RetryPolicy:
        """The policy the ``retry_*`` settings describe (``overrides`` win)."""
        values: dict[str, Any] = {
            "max_attempts": settings.retry_max_attempts,
            "backoff_ms": settings.retry_backoff_sequence,
            "max_backoff_ms": settings.retry_max_backoff_ms,
            "jitter": settings.retry_jitter_factor,
        }
        values.update(overrides)
        return cls(**values)

    def base_backoff(self, attempt: int) -> float:
        """The delay (ms) after failed attempt ``attempt`` (1-based), before jitter."""
        if attempt < 1:
            raise ValueError(f"attempts count from 1, got {attempt}")
        index = min(attempt, len(self.backoff_ms)) - 1
        return float(min(self.backoff_ms[index], self.max_backoff_ms))

    def backoff(self, attempt: int) -> float:
        """The delay (ms) after failed attempt ``attempt`` (1-based), jitter applied."""
        base = self.base_backoff(attempt)
        if not self.jitter:
            return base
        moved = base * (1 + self.jitter * (2 * self.random() - 1))
        return float(max(0.0, min(moved, self.max_backoff_ms)))

    def delays(self) -> list[float]:
        """The delays (ms) between the attempts, one fewer than ``max_attempts``."""
        return [self.backoff(n) for n in range(1, self.max_attempts)]

    def retriable(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth another attempt (never for CircuitOpen)."""
        return isinstance(exc, self.retriable_errors) and not isinstance(exc, CircuitOpen)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` until it succeeds, a non-retriable error is raised, or
        ``max_attempts`` attempts failed (then the last error is raised)."""
        attempt = 1
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                if not self.retriable(exc):
                    raise
                if attempt >= self.max_attempts:
                    log.info(
                        "retry exhausted: %d attempt(s) of %s failed; last error: %r",
                        attempt, _name(fn), exc,
                    )
                    telemetry.emit(("snakepit", "retry", "exhausted"), {"attempts": attempt},
                                   {"function": _name(fn), "error": type(exc).__name__})
                    raise
                delay = self.backoff(attempt)
                telemetry.emit(("snakepit", "retry", "attempt"),
                               {"attempt": attempt, "delay_ms": delay},
                               {"function": _name(fn), "error": type(exc).__name__})
                log.debug(
                    "retry attempt %d of %s failed (%r); next in %.0f ms",
                    attempt, _name(fn), exc, delay,
                )
                self.sleep(delay / 1000)
                attempt += 1
                continue
            if attempt > 1:
                log.debug("retry success: %s succeeded on attempt %d", _name(fn), attempt)
                telemetry.emit(("snakepit", "retry", "success"), {"attempts": attempt},
                               {"function": _name(fn)})
            return result


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)

