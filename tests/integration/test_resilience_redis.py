"""CircuitBreaker and HealthMonitor against a real redis-server (the session ``redis_url``).

Time is Redis server time. A breaker's reset timeout travels with each script call, so two
breaker objects of the same name with different reset timeouts share one state: ``slow``
(60 s) holds the circuit open for as long as a test needs, ``fast`` (1 ms) moves it to
half_open as soon as any time has passed. No test asserts a measured duration.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from helpers import REPO, subprocess_env, wait_until

from snakepit_tasks import errors, keys
from snakepit_tasks.config import Settings
from snakepit_tasks.resilience import (
    CircuitBreaker,
    HealthMonitor,
    RetryPolicy,
    breaker_for,
    execute_with_protection,
)

pytestmark = pytest.mark.timeout(120)

WAIT = 20.0


@pytest.fixture(scope="module")
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def name() -> str:
    return f"cb{uuid.uuid4().hex[:10]}"


def pair(r: redis.Redis, name: str, **kw: Any) -> tuple[CircuitBreaker, CircuitBreaker]:
    """(slow, fast): the same circuit seen with a 60 s and a 1 ms reset timeout."""
    slow = CircuitBreaker(name, redis=r, reset_timeout_ms=60_000, **kw)
    fast = CircuitBreaker(name, redis=r, reset_timeout_ms=1, **kw)
    return slow, fast


def to_half_open(slow: CircuitBreaker, fast: CircuitBreaker) -> None:
    assert slow.state == "open"
    wait_until(lambda: fast.state == "half_open", timeout=WAIT, message="half_open")
    assert slow.state == "half_open"  # the transition is stored, not computed per caller


def trip(b: CircuitBreaker) -> None:
    for _ in range(b.failure_threshold):
        b.record_failure()
    assert b.state == "open"


# -- transitions ---------------------------------------------------------------------------
def test_closed_open_half_open_closed(
    r: redis.Redis, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    slow, fast = pair(r, name, failure_threshold=3)
    caplog.set_level(logging.INFO, logger="snakepit_tasks.resilience")
    assert slow.state == "closed"
    slow.record_failure()
    slow.record_failure()
    assert slow.state == "closed"
    slow.record_failure()
    assert slow.state == "open"
    assert not slow.allow()
    stats = slow.stats()
    assert stats["state"] == "open" and stats["opened"] == 1 and stats["rejected"] == 1
    assert stats["retry_in_ms"] > 0

    to_half_open(slow, fast)
    assert slow.allow()  # the one trial
    assert not slow.allow()  # half_open_max_calls = 1
    slow.record_success()
    assert slow.state == "closed"
    assert slow.allow() and slow.allow()
    stats = slow.stats()
    assert stats["consecutive_failures"] == 0 and stats["successes"] == 1
    assert stats["failures"] == 3

    logged = [m.getMessage() for m in caplog.records if m.name == "snakepit_tasks.resilience"]
    assert [m.split("(")[0].strip() for m in logged] == [
        f"circuit {name}: closed -> open",
        f"circuit {name}: open -> half_open",
        f"circuit {name}: half_open -> closed",
    ]


def test_half_open_trial_failure_reopens_and_restarts_the_timer(
    r: redis.Redis, name: str
) -> None:
    slow, fast = pair(r, name, failure_threshold=2)
    trip(slow)
    first_open = slow.stats()["opened_at_ms"]
    to_half_open(slow, fast)
    token = slow.acquire()
    assert token
    slow.record_failure(token)
    assert slow.state == "open"
    stats = slow.stats()
    assert stats["opened"] == 2
    assert stats["opened_at_ms"] >= first_open
    assert stats["retry_in_ms"] > 30_000  # a fresh 60 s period, not the rest of the old one
    with pytest.raises(errors.CircuitOpen):
        slow.acquire()


def test_default_threshold_is_five(r: redis.Redis, name: str) -> None:
    b = CircuitBreaker(name, redis=r, reset_timeout_ms=60_000)
    assert b.failure_threshold == 5
    for _ in range(4):
        b.record_failure()
    assert b.state == "closed"
    b.record_failure()
    assert b.state == "open"


def test_consecutive_not_cumulative(r: redis.Redis, name: str) -> None:
    b = CircuitBreaker(name, redis=r, failure_threshold=3, reset_timeout_ms=60_000)
    for outcome in "FFSFFSFF":
        b.record_failure() if outcome == "F" else b.record_success()
    assert b.state == "closed"  # 6 failures in all, never 3 in a row
    assert b.stats()["consecutive_failures"] == 2
    b.record_failure()
    assert b.state == "open"


def test_late_outcomes_while_open_change_nothing(r: redis.Redis, name: str) -> None:
    b = CircuitBreaker(name, redis=r, failure_threshold=1, reset_timeout_ms=60_000)
    b.record_failure()
    opened_at = b.stats()["opened_at_ms"]
    b.record_failure()  # a call let through before the circuit opened, failing late
    b.record_success()
    stats = b.stats()
    assert stats["state"] == "open" and stats["opened"] == 1
    assert stats["opened_at_ms"] == opened_at


def test_stale_trial_token_does_not_decide(r: redis.Redis, name: str) -> None:
    slow, fast = pair(r, name, failure_threshold=1, half_open_max_calls=1)
    trip(slow)
    to_half_open(slow, fast)
    old = slow.acquire()
    slow.record_failure(old)
    to_half_open(slow, fast)
    new = slow.acquire()
    assert new and new != old
    slow.record_success(old)  # the old trial's outcome arrives again: not a trial any more
    assert slow.state == "half_open"
    slow.record_success(new)
    assert slow.state == "closed"


def test_lost_trial_slot_expires(r: redis.Redis, name: str) -> None:
    slow, fast = pair(r, name, failure_threshold=1)
    trip(slow)
    to_half_open(slow, fast)
    lost = CircuitBreaker(name, redis=r, reset_timeout_ms=3_000, failure_threshold=1)
    assert lost.allow()  # its caller dies and never reports
    assert not slow.allow()
    wait_until(slow.allow, timeout=WAIT, message="the lost trial's slot to expire")
    slow.record_success()
    assert slow.state == "closed"


def test_reset(r: redis.Redis, name: str) -> None:
    b = CircuitBreaker(name, redis=r, failure_threshold=1, reset_timeout_ms=60_000)
    b.record_failure()
    assert b.state == "open"
    b.reset()
    assert b.state == "closed"
    assert b.stats()["failures"] == 0
    assert b.allow()


# -- call() --------------------------------------------------------------------------------
def test_open_circuit_raises_without_calling_fn(r: redis.Redis, name: str) -> None:
    b = CircuitBreaker(name, redis=r, failure_threshold=1, reset_timeout_ms=60_000)
    b.record_failure()
    called = []
    with pytest.raises(errors.CircuitOpen) as info:
        b.call(called.append, 1)
    assert called == []
    assert info.value.details["circuit"] == name
    assert info.value.details["state"] == "open"
    assert 0 < info.value.details["retry_in_ms"] <= 60_000
    assert "open" in str(info.value)
    with pytest.raises(errors.CircuitOpen):
        b.check()


def test_call_counts_pool_failures_not_adapter_errors(r: redis.Redis, name: str) -> None:
    b = CircuitBreaker(name, redis=r, failure_threshold=2, reset_timeout_ms=60_000)

    def raising(exc: BaseException) -> None:
        raise exc

    assert b.call(lambda a, k: a + k, 1, k=2) == 3
    with pytest.raises(errors.WorkerCrashed):
        b.call(raising, errors.WorkerCrashed("died"))
    for _ in range(3):  # the pool answered: no failure, and the crash streak is broken
        with pytest.raises(errors.AdapterError):
            b.call(raising, errors.AdapterError("bad input"))
    with pytest.raises(errors.ExecutionTimeout):
        b.call(raising, errors.ExecutionTimeout("slow"))
    assert b.state == "closed"
    with pytest.raises(errors.QueueTimeout):
        b.call(raising, errors.QueueTimeout("queued"))
    assert b.state == "open"

    strict = CircuitBreaker(
        f"{name}x", redis=r, failure_threshold=1, reset_timeout_ms=60_000,
        counts=lambda e: isinstance(e, errors.AdapterError),
    )
    with pytest.raises(errors.AdapterError):
        strict.call(raising, errors.AdapterError("bad"))
    assert strict.state == "open"


def test_half_open_admits_at_most_n_concurrent_trials(r: redis.Redis, name: str) -> None:
    slow, fast = pair(r, name, failure_threshold=1, half_open_max_calls=2)
    trip(slow)
    to_half_open(slow, fast)
    threads_n = 8
    start = threading.Barrier(threads_n, timeout=WAIT)
    release = threading.Event()
    lock = threading.Lock()
    admitted: list[int] = []
    rejected: list[errors.CircuitOpen] = []

    def trial(i: int) -> None:
        admitted.append(i)
        assert release.wait(WAIT)

    def worker(i: int) -> None:
        start.wait()
        try:
            slow.call(trial, i)
        except errors.CircuitOpen as exc:
            with lock:
                rejected.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    wait_until(lambda: len(admitted) + len(rejected) == threads_n, timeout=WAIT)
    assert len(admitted) == 2
    assert len(rejected) == threads_n - 2
    assert all(e.details["state"] == "half_open" for e in rejected)
    assert slow.stats()["half_open_in_flight"] == 2
    release.set()
    for t in threads:
        t.join(WAIT)
    assert slow.state == "closed"


# -- sharing -------------------------------------------------------------------------------
def test_two_breakers_of_one_name_share_state(r: redis.Redis, name: str) -> None:
    a = CircuitBreaker(name, redis=r, failure_threshold=2, reset_timeout_ms=60_000)
    b = CircuitBreaker(name, redis=r, failure_threshold=2, reset_timeout_ms=60_000)
    a.record_failure()
    b.record_failure()
    assert a.state == b.state == "open"
    assert not b.allow()


def test_another_process_sees_and_changes_the_same_circuit(
    r: redis.Redis, redis_url: str, name: str
) -> None:
    here = CircuitBreaker(name, redis=r, failure_threshold=2, reset_timeout_ms=60_000)
    here.record_failure()
    code = (
        "import json, sys\n"
        "from snakepit_tasks.resilience import CircuitBreaker\n"
        "b = CircuitBreaker(sys.argv[1], redis_url=sys.argv[2], failure_threshold=2,"
        " reset_timeout_ms=60000)\n"
        "before = b.stats()['consecutive_failures']\n"
        "b.record_failure()\n"
        "print(json.dumps({'before': before, 'state': b.state, 'allow': b.allow()}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, name, redis_url],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"before": 1, "state": "open", "allow": False}
    assert here.state == "open"


def test_per_pool_and_per_tool_breakers_are_independent(redis_url: str, name: str) -> None:
    s = Settings(redis_url=redis_url, circuit_breaker_failure_threshold=1)
    tool = breaker_for(s, name, "predict")
    tool.record_failure()
    assert tool.state == "open"
    assert breaker_for(s, name).state == "closed"
    assert breaker_for(s, name, "other").state == "closed"
    assert breaker_for(s, name, "predict").state == "open"


def test_keys_expire_and_closed_admits_write_nothing(r: redis.Redis, name: str) -> None:
    b = CircuitBreaker(name, redis=r, failure_threshold=3)
    assert b.allow()
    b.check()
    assert not r.exists(keys.circuit(name))
    b.record_failure()
    assert 0 < r.pttl(keys.circuit(name)) <= 24 * 3600 * 1000


def test_protection_with_a_real_breaker(r: redis.Redis, name: str) -> None:
    b = CircuitBreaker(name, redis=r, failure_threshold=3, reset_timeout_ms=60_000)
    slept: list[float] = []
    policy = RetryPolicy(max_attempts=10, jitter=0, sleep=slept.append)
    calls = []

    def crash() -> None:
        calls.append(1)
        raise errors.WorkerCrashed("died")

    with pytest.raises(errors.CircuitOpen) as info:
        execute_with_protection(crash, breaker=b, policy=policy)
    assert len(calls) == 3
    assert isinstance(info.value.__cause__, errors.WorkerCrashed)
    assert slept == [0.1, 0.2, 0.4]


# -- health monitor ------------------------------------------------------------------------
def test_health_monitor_counts_crashes_in_the_window(r: redis.Redis, name: str) -> None:
    m = HealthMonitor(name, redis=r, max_crashes=3, window_ms=60_000)
    other = HealthMonitor(name, redis=r, max_crashes=3, window_ms=60_000)
    assert m.healthy() and m.crashes() == 0
    assert m.record_crash("n@h/0") == 1
    assert other.record_crash("n@h/1") == 2
    assert m.healthy()
    assert m.record_crash("n@h/0") == 3
    assert not m.healthy() and not other.healthy()
    stats = m.stats()
    assert stats["crashes"] == 3 and not stats["healthy"]
    assert stats["by_worker"] == {"n@h/0": 2, "n@h/1": 1}
    assert stats["last_crash_ago_ms"] >= 0
    assert 0 < r.pttl(keys.health(name)) <= 60_000
    m.reset()
    assert m.healthy() and m.stats()["by_worker"] == {}


def test_health_window_slides(r: redis.Redis, name: str) -> None:
    m = HealthMonitor(name, redis=r, max_crashes=2, window_ms=300)
    # recorded back to back; on a loaded machine the first may already have left the window
    counts = [m.record_crash("w/0"), m.record_crash("w/0")]
    assert counts[1] >= 1
    wait_until(m.healthy, timeout=WAIT, message="old crashes to leave the window")
    wait_until(lambda: m.crashes() == 0, timeout=WAIT)
    assert m.stats()["by_worker"] == {}


def test_health_defaults_from_settings(redis_url: str, name: str) -> None:
    m = HealthMonitor(name, settings=Settings(redis_url=redis_url))
    assert (m.window_ms, m.max_crashes) == (60_000, 10)
    for i in range(9):
        m.record_crash(f"w/{i}")
    assert m.healthy()
    m.record_crash("w/9")
    assert not m.healthy()
