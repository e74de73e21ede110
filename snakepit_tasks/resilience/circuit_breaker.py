"""A circuit breaker whose state lives in Redis, shared by every caller and node.

States: ``closed`` (calls go through) → ``open`` after ``failure_threshold`` *consecutive*
failures (a success while closed resets the count; the original snakepit counted failures
cumulatively, so a pool failing once an hour would eventually open) → ``half_open`` once
``reset_timeout_ms`` has passed: at most ``half_open_max_calls`` trial calls go through at once
→ ``closed`` when a trial succeeds, ``open`` again (timer restarted) when one fails. Every
transition runs in one Lua script (``broker/circuit_breaker.lua``) on Redis server time, so
all machines agree; a trial whose caller dies without reporting frees its slot after
``reset_timeout_ms``.

Which errors count as failures (``counts=``, default :func:`counts_as_failure`): the ones that
say the *pool* is unwell: :class:`WorkerCrashed`, :class:`ExecutionTimeout`,
:class:`QueueTimeout`, :class:`NoWorkersAvailable`, plus connection errors (``ConnectionError``,
``TimeoutError``, redis/kombu connection errors). :class:`AdapterError` does **not** count: it
means a worker ran the tool and the tool raised — usually bad input from one caller — and the
pool answered, which is proof of health; counting it would let one client's bad requests shut a
pool for everyone. Caller mistakes (ToolNotFound, SerializationError, ConfigurationError),
load shedding (QueueFull) and session-specific errors (WorkerBusy, SessionWorkerUnavailable)
do not count either. An exception that does not count is recorded as a *success* (the call went
through and was answered); ``KeyboardInterrupt``-like exits and a nested :class:`CircuitOpen`
only free the call's trial slot. Pass ``counts=`` to change this (e.g. per-tool breakers that
should also trip on AdapterError: ``counts=lambda e: isinstance(e, AdapterError) or
counts_as_failure(e)``).

If Redis cannot be reached, :meth:`CircuitBreaker.allow` lets the call through and outcomes are
dropped (logged at WARNING): the breaker never becomes the reason a call fails.

Transitions are logged at INFO on the ``snakepit_tasks.resilience`` logger.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import redis as redis_lib
from redis import Redis

from .. import errors, keys, lua, telemetry
from ..config import Settings, load_settings
from ..connections import redis_client, text

log = logging.getLogger("snakepit_tasks.resilience")

T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
_TRANSITIONS = {
    OPEN: ("snakepit", "circuit_breaker", "opened"),
    HALF_OPEN: ("snakepit", "circuit_breaker", "half_open"),
    CLOSED: ("snakepit", "circuit_breaker", "closed"),
}

# The breaker's keys live this long after its last change (longer when reset_timeout is).
KEY_TTL_MS = 24 * 3600 * 1000


def _connection_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [
        ConnectionError,
        TimeoutError,
        redis_lib.ConnectionError,
        redis_lib.TimeoutError,
    ]
    try:
        from kombu.exceptions import OperationalError

        found.append(OperationalError)
    except ImportError:  # pragma: no cover - kombu is a dependency
        pass
    return tuple(found)


CONNECTION_ERRORS: tuple[type[BaseException], ...] = _connection_errors()
"""Errors that mean a broker, Redis or worker could not be reached."""

FAILURE_ERRORS: tuple[type[BaseException], ...] = (
    errors.WorkerCrashed,
    errors.ExecutionTimeout,
    errors.QueueTimeout,
    errors.NoWorkersAvailable,
    *CONNECTION_ERRORS,
)
"""Errors that count as a failure of the pool by default (see the module docstring)."""


def counts_as_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the pool is unwell (the default ``counts=`` predicate)."""
    return isinstance(exc, FAILURE_ERRORS)


class CircuitBreaker:
    """One named circuit (per pool, or per pool and tool) whose state is kept in Redis.

    Any number of objects with the same name, in any number of processes on any machine,
    share one state. Unset thresholds come from ``settings`` (``circuit_breaker_*``).
    """

    def __init__(
        self,
        name: str,
        *,
        tool: str | None = None,
        redis: Redis | None = None,
        redis_url: str | None = None,
        failure_threshold: int | None = None,
        reset_timeout_ms: int | None = None,
        half_open_max_calls: int | None = None,
        settings: Settings | None = None,
        counts: Callable[[BaseException], bool] = counts_as_failure,
    ) -> None:
        if settings is None:
            # Given a connection, unset thresholds take the defaults; given nothing, the
            # configuration (file, environment) says where Redis is and what the thresholds are.
            settings = Settings() if redis is not None or redis_url else load_settings()
        self.name = name
        self.tool = tool
        self.label = name if tool is None else f"{name}/{tool}"
        self.redis: Redis = redis if redis is not None else redis_client(
            redis_url or settings.redis_url
        )
        self.failure_threshold = _positive(
            "failure_threshold", failure_threshold, settings, "circuit_breaker_failure_threshold"
        )
        self.reset_timeout_ms = _positive(
            "reset_timeout_ms", reset_timeout_ms, settings, "circuit_breaker_reset_timeout_ms"
        )
        self.half_open_max_calls = _positive(
            "half_open_max_calls",
            half_open_max_calls,
            settings,
            "circuit_breaker_half_open_max_calls",
        )
        self.counts = counts
        self._keys = [keys.circuit(name, tool), keys.circuit_trials(name, tool)]
        self._ttl_ms = max(KEY_TTL_MS, 2 * self.reset_timeout_ms)
        self._local = threading.local()  # the trial token allow() handed to this thread

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.label!r})"

    # -- the script ------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        """The script's KEYS (state hash, trial slots)."""
        return self._keys

    def argv(self, op: str, token: str = "") -> list[Any]:
        """The script's ARGV for ``op`` (for callers that run it in their own round trip)."""
        return [op, self.failure_threshold, self.reset_timeout_ms, self.half_open_max_calls,
                token, self._ttl_ms]

    def _run(self, op: str, token: str = "") -> list[Any]:
        script = lua.script(self.redis, "circuit_breaker")
        reply: list[Any] = script(keys=self._keys, args=self.argv(op, token))
        return self.seen(reply)

    def seen(self, reply: list[Any]) -> list[Any]:
        """Take note of a reply of the script (a transition is logged and emitted)."""
        before, after = text(reply[0]), text(reply[1])
        if before != after:
            self._log_transition(before, after, int(reply[4]))
        return reply

    def _log_transition(self, before: str, after: str, failures: int) -> None:
        if after == OPEN and before == CLOSED:
            why = f"after {self.failure_threshold} consecutive failures"
        elif after == OPEN:
            why = "a trial call failed"
        elif after == HALF_OPEN:
            why = f"{self.reset_timeout_ms} ms passed; letting trial calls through"
        elif before == HALF_OPEN:
            why = "a trial call succeeded"
        else:
            why = "reset"
        log.info("circuit %s: %s -> %s (%s)", self.label, before, after, why)
        if after in _TRANSITIONS:
            telemetry.emit(_TRANSITIONS[after], {"failures": failures}, {
                "circuit": self.label, "pool": self.name, "tool": self.tool, "from": before})

    def _safely(self, op: str, token: str = "") -> list[Any] | None:
        try:
            return self._run(op, token)
        except redis_lib.RedisError as exc:
            log.warning("circuit %s: cannot reach Redis for %r (%s)", self.label, op, exc)
            return None

    # -- admitting calls -------------------------------------------------------------------
    def acquire(self) -> str:
        """Admit one call or raise :class:`CircuitOpen`; return its token ('' if not a trial).

        Pass the token to :meth:`record` (or ``record_success``/``record_failure``) when the
        call ends. Half-open, this takes one of the ``half_open_max_calls`` trial slots.
        """
        return self.admit()[0]

    def admit(self) -> tuple[str, int]:
        """:meth:`acquire`, also returning the consecutive failures seen when admitting.

        A success needs recording only when it changes something: a trial token, or failures
        to reset. Callers on the hot path skip the round trip otherwise (the ``successes``
        counter then counts only those recorded).
        """
        reply = self._safely("admit")
        if reply is None:
            return "", 0
        return self.verdict(reply)

    def verdict(self, reply: list[Any]) -> tuple[str, int]:
        """What an ``admit`` (or ``check``) reply says: raise CircuitOpen when rejected, else
        the trial token ('' when not a trial) and the consecutive failures seen."""
        verdict = text(reply[2])
        if verdict == "":
            raise self._open_error(reply)
        return ("" if verdict == "0" else verdict), int(reply[4])

    def check(self) -> None:
        """Raise :class:`CircuitOpen` if the circuit is open; takes no trial slot.

        For calls whose outcome this process never sees (fire-and-forget ``execute_async``).
        """
        reply = self._safely("check")
        if reply is not None and text(reply[2]) == "":
            raise self._open_error(reply)

    def allow(self) -> bool:
        """Whether a call may go through now (half-open, admitting it takes a trial slot).

        The slot's token is remembered for this thread's next ``record_*`` call.
        """
        try:
            token = self.acquire()
        except errors.CircuitOpen:
            return False
        self._local.token = token
        return True

    def _open_error(self, reply: list[Any]) -> errors.CircuitOpen:
        now_state = text(reply[1])
        retry_in = max(0, int(reply[3]))
        if now_state == HALF_OPEN:
            what = (
                f"half-open with {self.half_open_max_calls} trial call(s) already in flight; "
                "retry when a trial has finished"
            )
        else:
            what = (
                f"open after {self.failure_threshold} consecutive failures; calls fail fast "
                f"for another {retry_in} ms, then trial calls are let through"
            )
        return errors.CircuitOpen(
            f"circuit breaker {self.label!r} is {what}",
            {"circuit": self.label, "state": now_state, "retry_in_ms": retry_in},
        )

    # -- outcomes --------------------------------------------------------------------------
    def _token(self, token: str | None) -> str:
        if token is not None:
            return token
        found: str = getattr(self._local, "token", "")
        self._local.token = ""
        return found

    def record_success(self, token: str | None = None) -> None:
        """An admitted call succeeded: resets the failure count; closes a half-open circuit."""
        self._safely("success", self._token(token))

    def record_failure(self, token: str | None = None) -> None:
        """An admitted call failed: counts toward opening; reopens a half-open circuit."""
        self._safely("failure", self._token(token))

    def release(self, token: str | None = None) -> None:
        """An admitted call ended with no verdict on the pool: frees its trial slot."""
        self._safely("release", self._token(token))

    def record(self, exc: BaseException | None, token: str | None = None) -> None:
        """Record a call's outcome: ``None`` for success, else the exception it raised,
        classified by ``counts`` (see the module docstring)."""
        if exc is None:
            self.record_success(token)
        elif not isinstance(exc, Exception) or isinstance(exc, errors.CircuitOpen):
            self.release(token)
        elif self.counts(exc):
            self.record_failure(token)
        else:
            self.record_success(token)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` through the breaker; raise CircuitOpen without calling
        it when the circuit is open (or half-open with every trial slot taken)."""
        token = self.acquire()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.record(exc, token)
            raise
        self.record(None, token)
        return result

    # -- inspection ------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"`` (as every process sees it now)."""
        return text(self._run("peek")[1])

    def reset(self) -> None:
        """Close the circuit and forget its counters."""
        self._run("reset")

    def stats(self) -> dict[str, Any]:
        """State, thresholds and counters (successes, failures, rejected, times opened)."""
        reply = self._run("stats")
        raw = reply[6:]
        fields = {text(raw[i]): text(raw[i + 1]) for i in range(0, len(raw), 2)}

        def number(name: str) -> int:
            return int(fields.get(name, 0))

        return {
            "name": self.label,
            "state": text(reply[1]),
            "consecutive_failures": int(reply[4]),
            "failure_threshold": self.failure_threshold,
            "reset_timeout_ms": self.reset_timeout_ms,
            "half_open_max_calls": self.half_open_max_calls,
            "half_open_in_flight": int(reply[5]),
            "retry_in_ms": max(0, int(reply[3])),
            "successes": number("successes"),
            "failures": number("failures_total"),
            "rejected": number("rejected"),
            "opened": number("opened"),
            "opened_at_ms": number("opened_at") or None,
            "last_failure_at_ms": number("last_failure_at") or None,
        }


class Admission:
    """One call's pass through a breaker, run inside another round trip (routing's pipeline,
    or the fast lane's send script) instead of a round trip of its own.

    ``op`` is ``"admit"`` (a call whose outcome is recorded: :meth:`record`) or ``"check"``
    (fire-and-forget: rejected only while open, takes no trial slot, records nothing).
    """

    def __init__(self, breaker: CircuitBreaker, op: str = "admit") -> None:
        self.breaker = breaker
        self.op = op
        self.admitted = False
        self.token = ""
        self.failures = 0

    def settle(self, reply: list[Any]) -> None:
        """Take the script's reply: raise CircuitOpen when it rejected the call."""
        self.breaker.seen(reply)
        token, failures = self.breaker.verdict(reply)
        if self.op == "admit":
            self.admitted, self.token, self.failures = True, token, failures

    def admit(self) -> None:
        """Admit the call in a round trip of its own (:meth:`CircuitBreaker.admit`): raise
        CircuitOpen when rejected."""
        self.token, self.failures = self.breaker.admit()
        self.admitted = True

    def record(self, exc: BaseException | None) -> None:
        """Record the admitted call's outcome (``None``: success). A success is sent only when
        it changes something (a trial token, failures to reset): no round trip otherwise."""
        if not self.admitted:
            return
        self.admitted = False
        if exc is not None or self.token or self.failures:
            self.breaker.record(exc, self.token)


def _positive(arg: str, value: int | None, settings: Settings, setting: str) -> int:
    if value is None:
        value = getattr(settings, setting)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise errors.ConfigurationError(
            f"circuit breaker {arg} must be a positive integer, got {value!r}", {arg: value}
        )
    return value


def breaker_for(
    settings: Settings,
    pool: str,
    tool: str | None = None,
    *,
    redis: Redis | None = None,
    counts: Callable[[BaseException], bool] = counts_as_failure,
) -> CircuitBreaker:
    """The breaker of ``pool`` (or of ``tool`` in ``pool`` when given), configured by
    ``settings``; cheap to call per request (state lives in Redis, clients are shared)."""
    return CircuitBreaker(pool, tool=tool, redis=redis, settings=settings, counts=counts)
