"""Property-based: every public caller function maps every bad argument to a SnakepitError
whose message says what to fix, fast, with nothing from inside Celery, kombu or redis-py.

Runs against a real Redis with a pool that no node serves, so a call that passes validation
ends in NoWorkersAvailable (also a SnakepitError) instead of waiting for a worker."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import snakepit_tasks as sp
from snakepit_tasks import app as app_module
from snakepit_tasks import errors

pytestmark = pytest.mark.timeout(300)

POOL = "fuzzpool"

names = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["", "\x00", "a\nb", "ping\x07", "é" * 200, "\u202e", "ping"]),
    st.integers(), st.none(), st.binary(max_size=10), st.floats(allow_nan=True),
    st.lists(st.integers(), max_size=3),
)
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=50), st.binary(max_size=20), st.builds(object),
    st.sampled_from([math.nan, math.inf, -math.inf, "x" * 5000, {1, 2}, (1, 2)]),
)
values = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4),
    st.dictionaries(st.integers(), inner, max_size=2),
), max_leaves=12)
args_strategy = st.one_of(
    st.none(), values, st.dictionaries(st.text(max_size=10), values, max_size=5),
)
timeouts = st.one_of(
    st.none(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5), st.booleans(), st.lists(st.integers(), max_size=2),
)
affinities = st.one_of(st.none(), st.sampled_from(["hint", "strict_queue", "strict_fail_fast"]),
                       st.text(max_size=10), st.integers())


def deep_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.fixture(scope="module")
def fuzz_app(redis_url: str) -> Any:
    app = app_module.configure(redis_url=redis_url, pools=[{"name": POOL}],
                               pool_queue_timeout=200, circuit_breaker_enabled=False)
    yield app
    app_module.reset_default_app()


def check(fn: Any) -> None:
    started = time.monotonic()
    try:
        fn()
    except errors.SnakepitError as exc:
        assert str(exc), "an error message must say what to fix"
    except Exception as exc:  # pragma: no cover - the property under test
        raise AssertionError(f"{type(exc).__module__}.{type(exc).__name__}: {exc}") from exc
    else:
        raise AssertionError("a call to a pool without nodes returned instead of raising")
    assert time.monotonic() - started < 5.0, "bad input must be refused fast"


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(command=names, args=args_strategy, timeout=timeouts, pool=st.one_of(st.none(), names))
def test_execute_and_execute_async(fuzz_app, command, args, timeout, pool):
    pool = POOL if pool is None else pool
    check(lambda: sp.execute(command, args, pool=pool, timeout=timeout, app=fuzz_app))
    check(lambda: sp.execute_async(command, args, pool=pool, timeout=timeout, app=fuzz_app))


@FUZZ
@given(session_id=names, command=names, args=args_strategy, timeout=timeouts,
       affinity=affinities)
def test_session_calls(fuzz_app, session_id, command, args, timeout, affinity):
    check(lambda: sp.execute_in_session(session_id, command, args, pool=POOL, timeout=timeout,
                                        affinity=affinity, app=fuzz_app))
    check(lambda: sp.execute_in_session_async(session_id, command, args, pool=POOL,
                                              timeout=timeout, affinity=affinity, app=fuzz_app))


@FUZZ
@given(command=names, args=args_strategy, timeout=timeouts)
def test_streams(fuzz_app, command, args, timeout):
    check(lambda: list(sp.stream(command, args, pool=POOL, timeout=timeout, app=fuzz_app)))
    check(lambda: sp.execute_stream(command, args, lambda chunk: None, pool=POOL,
                                    timeout=timeout, app=fuzz_app))


@pytest.mark.parametrize("depth", [1_000, 10_000])
def test_deep_nesting_and_huge_values(fuzz_app, depth):
    check(lambda: sp.execute("echo", {"x": deep_list(depth)}, pool=POOL, app=fuzz_app))
    check(lambda: sp.execute("echo", {"x": "y" * (50 * 1024 * 1024)}, pool=POOL, app=fuzz_app))
