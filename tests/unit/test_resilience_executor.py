"""snakepit_tasks.resilience.executor: timeout, retry, protection (stub breaker), batches."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any

import pytest

from snakepit_tasks import errors
from snakepit_tasks.resilience import (
    RetryPolicy,
    execute_batch,
    execute_with_protection,
    execute_with_retry,
    execute_with_timeout,
)

WAIT = 10.0  # seconds a test waits for an event before failing (never a measured duration)


def fast_policy(**kw: Any) -> tuple[RetryPolicy, list[float]]:
    slept: list[float] = []
    return RetryPolicy(jitter=0, sleep=slept.append, **kw), slept


# -- execute_with_timeout ------------------------------------------------------------------
def test_timeout_returns_result_and_propagates_errors() -> None:
    assert execute_with_timeout(lambda: 7, 5.0) == 7
    assert execute_with_timeout(lambda: 8, None) == 8

    def boom() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        execute_with_timeout(boom, 5.0)


def test_timeout_raises_execution_timeout_and_leaves_fn_running() -> None:
    release, finished = threading.Event(), threading.Event()

    def stuck() -> str:
        release.wait(WAIT)
        finished.set()
        return "late"

    with pytest.raises(errors.ExecutionTimeout) as info:
        execute_with_timeout(stuck, 0.05)
    assert info.value.details["timeout"] == 0.05
    assert not finished.is_set()
    release.set()
    assert finished.wait(WAIT)


def test_timeout_runs_fn_with_the_callers_context() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("caller")
    assert execute_with_timeout(var.get, 5.0) == "caller"


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "1", True])
def test_invalid_timeout_rejected(bad: Any) -> None:
    with pytest.raises(errors.ConfigurationError):
        execute_with_timeout(lambda: 1, bad)


# -- execute_with_retry --------------------------------------------------------------------
def test_retry_uses_policy_and_default() -> None:
    policy, slept = fast_policy(max_attempts=4)
    calls = []

    def fn() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise errors.QueueTimeout("busy")
        return "done"

    assert execute_with_retry(fn, policy) == "done"
    assert slept == [0.1, 0.2, 0.4]
    with pytest.raises(errors.AdapterError):
        execute_with_retry(lambda: (_ for _ in ()).throw(errors.AdapterError("x")))


# -- execute_with_protection (stub breaker; the real one is in the integration tests) -------
class StubBreaker:
    """Opens after ``threshold`` failures; like CircuitBreaker.call, counts only crashes."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.failures = 0
        self.calls = 0

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.failures >= self.threshold:
            raise errors.CircuitOpen("open", {"circuit": "stub"})
        self.calls += 1
        try:
            return fn(*args, **kwargs)
        except errors.WorkerCrashed:
            self.failures += 1
            raise


def test_protection_stops_retrying_when_the_circuit_opens() -> None:
    policy, slept = fast_policy(max_attempts=10)
    breaker = StubBreaker(threshold=2)
    ran = []

    def crash() -> None:
        ran.append(1)
        raise errors.WorkerCrashed("died")

    with pytest.raises(errors.CircuitOpen) as info:
        execute_with_protection(crash, breaker=breaker, policy=policy)  # type: ignore[arg-type]
    assert len(ran) == 2
    assert isinstance(info.value.__cause__, errors.WorkerCrashed)
    assert slept == [0.1, 0.2]


def test_protection_success_after_retry_and_timeout_per_attempt() -> None:
    policy, _ = fast_policy(max_attempts=3)
    breaker = StubBreaker(threshold=5)
    release = threading.Event()
    attempts = []

    def first_hangs() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            release.wait(WAIT)
            return "too late"
        return "ok"

    try:
        result = execute_with_protection(
            first_hangs, breaker=breaker, policy=policy, timeout=0.05  # type: ignore[arg-type]
        )
    finally:
        release.set()
    assert result == "ok"
    assert len(attempts) == 2


# -- execute_batch -------------------------------------------------------------------------
def test_batch_keeps_input_order_under_max_concurrency() -> None:
    lock = threading.Lock()
    active = [0]
    peak = [0]
    both_started = threading.Barrier(2, timeout=WAIT)
    n = 12

    def item(i: int) -> Callable[[], int]:
        def run() -> int:
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            try:
                if i < 2:
                    both_started.wait()  # proves two really run at once
                # later items finish before earlier ones: completion order != input order
                threading.Event().wait(0.001 * (n - i))
                return i * 10
            finally:
                with lock:
                    active[0] -= 1

        return run

    results = execute_batch([item(i) for i in range(n)], max_concurrency=2)
    assert results == [i * 10 for i in range(n)]
    assert peak[0] == 2


def test_batch_returns_exceptions_in_place() -> None:
    error = ValueError("item 1")

    def fail() -> None:
        raise error

    results = execute_batch([lambda: "a", fail, lambda: "c"], max_concurrency=3)
    assert results == ["a", error, "c"]
    assert results[1] is error


def test_batch_raise_first_failure_stops_pending_items() -> None:
    started = []

    def item(i: int) -> Callable[[], int]:
        def run() -> int:
            started.append(i)
            if i == 1:
                raise errors.WorkerCrashed("item 1")
            return i

        return run

    with pytest.raises(errors.WorkerCrashed):
        execute_batch([item(i) for i in range(20)], max_concurrency=1, return_exceptions=False)
    assert started[:2] == [0, 1]
    assert len(started) < 20
    assert execute_batch([item(0), item(2)], return_exceptions=False) == [0, 2]


def test_batch_per_item_timeout() -> None:
    release = threading.Event()
    try:
        results = execute_batch(
            [lambda: "fast", lambda: release.wait(WAIT)], max_concurrency=2, timeout=0.05
        )
    finally:
        release.set()
    assert results[0] == "fast"
    assert isinstance(results[1], errors.ExecutionTimeout)


def test_batch_empty_and_invalid() -> None:
    assert execute_batch([]) == []
    with pytest.raises(errors.ConfigurationError):
        execute_batch([lambda: 1], max_concurrency=0)
