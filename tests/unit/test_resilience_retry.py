"""snakepit_tasks.resilience.retry: backoff sequence, cap, jitter bounds, run loop (fake sleep)."""

from __future__ import annotations

import random

import pytest
import redis

from snakepit_tasks import errors
from snakepit_tasks.config import Settings
from snakepit_tasks.resilience import NEVER_RAN_ERRORS, RetryPolicy


class Flaky:
    """Raises the given errors in turn, then returns ``value``; counts its calls."""

    def __init__(self, *raises: BaseException, value: object = "ok") -> None:
        self.raises = list(raises)
        self.value = value
        self.calls = 0

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        self.args = (args, kwargs)
        if self.raises:
            raise self.raises.pop(0)
        return self.value


def no_jitter(**kw: object) -> tuple[RetryPolicy, list[float]]:
    slept: list[float] = []
    return RetryPolicy(jitter=0, sleep=slept.append, **kw), slept  # type: ignore[arg-type]


def test_defaults_match_the_original() -> None:
    p = RetryPolicy()
    assert p.max_attempts == 3
    assert p.backoff_ms == (100, 200, 400, 800, 1600)
    assert p.max_backoff_ms == 30_000
    assert p.jitter == 0.25
    assert errors.WorkerCrashed in p.retriable_errors
    assert p.retriable(ConnectionRefusedError())
    assert p.retriable(redis.ConnectionError())
    assert p.retriable(errors.QueueTimeout("x"))
    assert not p.retriable(errors.AdapterError("x"))
    assert not p.retriable(ValueError())


def test_backoff_sequence_exact_without_jitter_last_value_repeats() -> None:
    p = RetryPolicy(max_attempts=8, jitter=0)
    assert p.delays() == [100, 200, 400, 800, 1600, 1600, 1600]
    assert [p.backoff(n) for n in (1, 2, 5, 6, 50)] == [100, 200, 1600, 1600, 1600]
    assert RetryPolicy(jitter=0).delays() == [100, 200]
    assert RetryPolicy(max_attempts=1).delays() == []
    with pytest.raises(ValueError):
        p.backoff(0)


def test_backoff_capped_at_max_backoff() -> None:
    p = RetryPolicy(max_attempts=4, backoff_ms=(100, 50_000), max_backoff_ms=30_000, jitter=0)
    assert p.delays() == [100, 30_000, 30_000]


def test_jitter_bounds_and_extremes() -> None:
    low = RetryPolicy(random=lambda: 0.0)
    high = RetryPolicy(random=lambda: 0.999999)
    mid = RetryPolicy(random=lambda: 0.5)
    assert low.backoff(1) == pytest.approx(75)
    assert high.backoff(1) == pytest.approx(125, rel=1e-4)
    assert mid.backoff(3) == pytest.approx(400)

    rng = random.Random(7)
    p = RetryPolicy(max_attempts=6, random=rng.random)
    seen = set()
    for _ in range(500):
        for n, delay in enumerate(p.delays(), start=1):
            base = p.base_backoff(n)
            assert base * 0.75 <= delay <= base * 1.25
            seen.add(round(delay))
    assert len(seen) > 50  # really jittered, not a constant


def test_jitter_never_exceeds_the_cap() -> None:
    p = RetryPolicy(backoff_ms=(30_000,), max_backoff_ms=30_000, random=lambda: 0.999)
    assert p.backoff(1) <= 30_000


def test_run_sleeps_the_sequence_and_raises_the_last_error() -> None:
    p, slept = no_jitter()
    first, last = errors.WorkerCrashed("one"), errors.ExecutionTimeout("three")
    fn = Flaky(first, errors.QueueTimeout("two"), last)
    with pytest.raises(errors.ExecutionTimeout) as info:
        p.run(fn)
    assert info.value is last
    assert fn.calls == 3
    assert slept == [0.1, 0.2]


def test_run_returns_on_success_and_passes_arguments() -> None:
    p, slept = no_jitter(max_attempts=5)
    fn = Flaky(errors.NoWorkersAvailable("a"), ConnectionError("b"), value=42)
    assert p.run(fn, 1, k=2) == 42
    assert fn.calls == 3
    assert fn.args == ((1,), {"k": 2})
    assert slept == [0.1, 0.2]


def test_non_retriable_error_raised_at_once() -> None:
    p, slept = no_jitter()
    fn = Flaky(errors.AdapterError("bad input"))
    with pytest.raises(errors.AdapterError):
        p.run(fn)
    assert fn.calls == 1
    assert slept == []


def test_circuit_open_never_retried_even_when_listed() -> None:
    p, slept = no_jitter(retriable_errors=(errors.SnakepitError,))
    fn = Flaky(errors.CircuitOpen("open"))
    with pytest.raises(errors.CircuitOpen):
        p.run(fn)
    assert fn.calls == 1 and slept == []


def test_never_ran_errors_choice() -> None:
    p, _ = no_jitter(retriable_errors=NEVER_RAN_ERRORS)
    assert p.retriable(errors.QueueTimeout("x"))
    assert not p.retriable(errors.WorkerCrashed("x"))


def test_single_attempt_policy_never_sleeps() -> None:
    p, slept = no_jitter(max_attempts=1)
    with pytest.raises(errors.WorkerCrashed):
        p.run(Flaky(errors.WorkerCrashed("x")))
    assert slept == []


def test_from_settings() -> None:
    s = Settings(
        retry_max_attempts=5,
        retry_backoff_sequence=(10, 20),
        retry_max_backoff_ms=15,
        retry_jitter_factor=0.0,
    )
    p = RetryPolicy.from_settings(s)
    assert (p.max_attempts, p.backoff_ms, p.max_backoff_ms, p.jitter) == (5, (10, 20), 15, 0.0)
    assert p.delays() == [10, 15, 15, 15]
    assert RetryPolicy.from_settings(s, max_attempts=2).max_attempts == 2
    assert RetryPolicy.from_settings(Settings()) == RetryPolicy()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": True},
        {"backoff_ms": ()},
        {"backoff_ms": (100, -1)},
        {"max_backoff_ms": -5},
        {"jitter": 1.5},
        {"jitter": -0.1},
    ],
)
def test_invalid_policy_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(errors.ConfigurationError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_retry_true_on_a_call_means_the_settings_policy() -> None:
    from snakepit_tasks.app import create_app
    from snakepit_tasks.caller import retry_policy
    from snakepit_tasks.config import load_settings

    app = create_app(load_settings(retry_max_attempts=5, retry_backoff_sequence=[10, 20],
                                   retry_max_backoff_ms=50, retry_jitter_factor=0.0))
    policy = retry_policy(app, True)
    assert policy is not None
    assert (policy.max_attempts, policy.backoff_ms, policy.max_backoff_ms, policy.jitter) == (
        5, (10, 20), 50, 0.0)
    assert retry_policy(app, None) is None and retry_policy(app, False) is None
    mine = RetryPolicy(max_attempts=2)
    assert retry_policy(app, mine) is mine
    with pytest.raises(errors.ConfigurationError, match="retry must be"):
        retry_policy(app, 3)  # type: ignore[arg-type]
