"""CircuitBreaker without a Redis: what counts as a failure, configuration, key names, and
failing open when Redis is unreachable. Its transitions run against a real redis-server in
tests/integration/test_resilience_redis.py (fakeredis cannot run Lua here)."""

from __future__ import annotations

import logging

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from snakepit_tasks import errors, keys
from snakepit_tasks.config import Settings
from snakepit_tasks.embedded_redis import free_port
from snakepit_tasks.resilience import CircuitBreaker, HealthMonitor, breaker_for, counts_as_failure


@pytest.fixture
def unreachable() -> redis.Redis:
    client = redis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    yield client
    client.close()


@pytest.mark.parametrize(
    "exc",
    [
        errors.WorkerCrashed("x"),
        errors.ExecutionTimeout("x"),
        errors.QueueTimeout("x"),
        errors.NoWorkersAvailable("x"),
        ConnectionRefusedError(),
        TimeoutError(),
        redis.ConnectionError(),
    ],
)
def test_pool_failures_count(exc: BaseException) -> None:
    assert counts_as_failure(exc)


@pytest.mark.parametrize(
    "exc",
    [
        errors.AdapterError("the tool raised"),
        errors.ToolNotFound("x"),
        errors.QueueFull("x"),
        errors.WorkerBusy("x"),
        errors.SessionWorkerUnavailable("x"),
        errors.SerializationError("x"),
        ValueError(),
    ],
)
def test_answers_and_caller_mistakes_do_not_count(exc: BaseException) -> None:
    assert not counts_as_failure(exc)


def test_thresholds_from_settings_and_overrides(unreachable: redis.Redis) -> None:
    s = Settings(
        circuit_breaker_failure_threshold=7,
        circuit_breaker_reset_timeout_ms=1234,
        circuit_breaker_half_open_max_calls=3,
    )
    b = CircuitBreaker("p", redis=unreachable, settings=s)
    assert (b.failure_threshold, b.reset_timeout_ms, b.half_open_max_calls) == (7, 1234, 3)
    b = CircuitBreaker("p", redis=unreachable, settings=s, failure_threshold=2)
    assert b.failure_threshold == 2
    b = CircuitBreaker("p", redis=unreachable)
    assert (b.failure_threshold, b.reset_timeout_ms, b.half_open_max_calls) == (5, 30_000, 1)


def test_breaker_for_pool_and_tool(unreachable: redis.Redis) -> None:
    s = Settings(circuit_breaker_failure_threshold=9)
    per_pool = breaker_for(s, "default", redis=unreachable)
    per_tool = breaker_for(s, "default", "predict", redis=unreachable)
    assert per_pool.label == "default" and per_tool.label == "default/predict"
    assert per_pool.failure_threshold == per_tool.failure_threshold == 9
    assert per_pool._keys == [keys.circuit("default"), keys.circuit_trials("default")]
    assert per_tool._keys[0] == keys.circuit("default", "predict")


def test_breaker_uses_settings_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from snakepit_tasks.resilience import circuit_breaker

    seen = []
    monkeypatch.setattr(circuit_breaker, "redis_client", lambda url: seen.append(url) or url)
    CircuitBreaker("p", settings=Settings(redis_url="redis://elsewhere:1/2"))
    CircuitBreaker("p", redis_url="redis://given:1/0")
    assert seen == ["redis://elsewhere:1/2", "redis://given:1/0"]


def test_key_names() -> None:
    assert keys.circuit("p") == "snakepit:circuit:p"
    assert keys.circuit("p", "predict") == "snakepit:circuit:p:predict"
    assert keys.circuit_trials("p") == "snakepit:circuit_trials:p"
    assert keys.circuit_trials("p", "t") == "snakepit:circuit_trials:p:t"
    assert keys.health("p") == "snakepit:health:p"
    # a tool named like the trials suffix cannot collide with the trials key
    assert keys.circuit("p", "trials") != keys.circuit_trials("p")


@pytest.mark.parametrize(
    "kwargs",
    [{"failure_threshold": 0}, {"reset_timeout_ms": -1}, {"half_open_max_calls": True}],
)
def test_invalid_thresholds_rejected(unreachable: redis.Redis, kwargs: dict[str, int]) -> None:
    with pytest.raises(errors.ConfigurationError):
        CircuitBreaker("p", redis=unreachable, **kwargs)


def test_invalid_health_limits_rejected(unreachable: redis.Redis) -> None:
    with pytest.raises(errors.ConfigurationError):
        HealthMonitor("p", redis=unreachable, max_crashes=0)
    m = HealthMonitor("p", redis=unreachable, settings=Settings(health_monitor_max_crashes=4))
    assert (m.window_ms, m.max_crashes) == (60_000, 4)


def test_fails_open_when_redis_is_unreachable(
    unreachable: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    b = CircuitBreaker("p", redis=unreachable)
    with caplog.at_level(logging.WARNING, logger="snakepit_tasks.resilience"):
        assert b.allow()
        assert b.call(lambda: "through") == "through"
        b.record_failure()
        b.check()
    assert "cannot reach Redis" in caplog.text
    with pytest.raises(redis.ConnectionError):
        b.state  # noqa: B018 - inspection does report the outage


# -- Admission: the breaker's admit run inside another round trip --------------------------


def test_an_admission_takes_the_scripts_verdict(unreachable: redis.Redis) -> None:
    from snakepit_tasks.resilience.circuit_breaker import Admission

    b = CircuitBreaker("p", redis=unreachable)
    assert b.argv("admit")[0] == "admit" and b.keys == [keys.circuit("p"),
                                                        keys.circuit_trials("p")]
    closed = Admission(b)
    closed.settle([b"closed", b"closed", b"0", 0, 2, 0])
    assert (closed.admitted, closed.token, closed.failures) == (True, "", 2)
    trial = Admission(b)
    trial.settle([b"half_open", b"half_open", b"7", 0, 0, 1])
    assert (trial.admitted, trial.token) == (True, "7")
    refused = Admission(b)
    with pytest.raises(errors.CircuitOpen, match="open after"):
        refused.settle([b"open", b"open", b"", 1500, 5, 0])
    assert not refused.admitted
    refused.record(errors.WorkerCrashed("x"))  # nothing to record: it never went through
    checked = Admission(b, "check")
    checked.settle([b"closed", b"closed", b"0", 0, 3, 0])
    assert not checked.admitted  # a check takes no slot and records no outcome


def test_a_quiet_success_needs_no_round_trip(unreachable: redis.Redis, caplog) -> None:
    from snakepit_tasks.resilience.circuit_breaker import Admission

    admission = Admission(CircuitBreaker("p", redis=unreachable))
    admission.settle([b"closed", b"closed", b"0", 0, 0, 0])
    with caplog.at_level(logging.WARNING, logger="snakepit_tasks.resilience"):
        admission.record(None)  # closed, no failures to reset: nothing sent
        assert not caplog.records
        again = Admission(admission.breaker)
        again.settle([b"closed", b"closed", b"0", 0, 1, 0])
        again.record(None)  # a failure to reset: sent (and Redis is unreachable here)
    assert any("cannot reach Redis" in r.getMessage() for r in caplog.records)
