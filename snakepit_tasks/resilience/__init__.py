"""Resilience: a circuit breaker and a health monitor shared through Redis, a retry policy,
and executor helpers (timeout, retry, protection, batches).

    from snakepit_tasks.resilience import breaker_for, RetryPolicy, execute_with_protection
    breaker = breaker_for(settings, "default")
    execute_with_protection(lambda: sp.execute("predict", args), breaker=breaker)
"""

from .circuit_breaker import (
    CLOSED,
    CONNECTION_ERRORS,
    FAILURE_ERRORS,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    breaker_for,
    counts_as_failure,
)
from .executor import (
    execute_batch,
    execute_with_protection,
    execute_with_retry,
    execute_with_timeout,
)
from .health import HealthMonitor
from .retry import NEVER_RAN_ERRORS, RETRIABLE_ERRORS, RetryPolicy

__all__ = [
    "CLOSED",
    "CONNECTION_ERRORS",
    "FAILURE_ERRORS",
    "HALF_OPEN",
    "NEVER_RAN_ERRORS",
    "OPEN",
    "RETRIABLE_ERRORS",
    "CircuitBreaker",
    "HealthMonitor",
    "RetryPolicy",
    "breaker_for",
    "counts_as_failure",
    "execute_batch",
    "execute_with_protection",
    "execute_with_retry",
    "execute_with_timeout",
]
