"""Chaos: the pool's circuit breaker end to end, with small thresholds (2 failures, 1 s).

Crashes (WorkerCrashed) open it; while open, calls fail with CircuitOpen without reaching a
worker; after the reset timeout one trial goes through: a success closes it, a failure opens
it again. A tool's own error (AdapterError) never opens it. Waits are bounded and wait for
states, never for a measured time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_served_by, wait_until

import snakepit_tasks as sp
from snakepit_tasks import errors

from .test_chaos_support import chaos_nodes, ready_pid, snapshot, wait_replaced

pytestmark = pytest.mark.timeout(120)

SETTINGS = {
    "circuit_breaker_failure_threshold": 2,
    "circuit_breaker_reset_timeout_ms": 1000,
    "crash_barrier_enabled": False,
}
NODE_ENV = {f"SNAKEPIT_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in SETTINGS.items()}


@pytest.fixture
def chaos_node(node: Any, pids: Any, tmp_path: Path) -> Iterator[Any]:
    yield from chaos_nodes(node, pids, tmp_path)


@pytest.fixture
def pool(chaos_node: Any, make_app: Any) -> Iterator[tuple[Any, Any, Any]]:
    """(node, caller app, the pool's breaker as every caller sees it)."""
    n = chaos_node(pool_size=1, env=NODE_ENV)
    app = make_app(n.table, **SETTINGS)
    breaker = sp.CircuitBreaker(n.pool, settings=app.snakepit_settings)
    assert breaker.state == "closed"
    yield n, app, breaker


def crash(n: Any, app: Any, *, wait: bool = True) -> int:
    """One call that kills the worker (WorkerCrashed); with ``wait``, wait for its
    replacement. Returns the pid that crashed."""
    (worker_id,) = n.worker_ids()
    pid = int(wait_until(lambda: ready_pid(n, worker_id), timeout=30, message="worker ready"))
    with pytest.raises(errors.WorkerCrashed):
        sp.execute("crash", {"code": 1}, timeout=60, app=app)
    if wait:
        wait_replaced(n, worker_id, pid)
    return pid


def requests(n: Any, app: Any) -> int:
    return int(sp.get_stats(n.pool, app=app)["requests"])


def test_adapter_errors_never_open_the_circuit(pool: tuple[Any, Any, Any]) -> None:
    n, app, breaker = pool
    for _ in range(4):  # twice the threshold
        with pytest.raises(errors.AdapterError):
            sp.execute("fail", {"message": "bad input"}, timeout=30, app=app)
    assert breaker.state == "closed"
    # A tool error between two crashes resets the count of consecutive failures.
    crash(n, app)
    with pytest.raises(errors.AdapterError):
        sp.execute("fail", timeout=30, app=app)
    crash(n, app)
    assert breaker.state == "closed"
    assert breaker.stats()["consecutive_failures"] == 1
    assert_served_by(n, sp.execute("ping", timeout=30, app=app))


def test_crashes_open_the_circuit_then_a_trial_closes_or_reopens_it(
    pool: tuple[Any, Any, Any],
) -> None:
    n, app, breaker = pool
    (worker_id,) = n.worker_ids()
    crash(n, app)
    assert breaker.state == "closed"
    generation = int(snapshot(n, worker_id)["generation"])
    before = requests(n, app)
    crashed = crash(n, app, wait=False)  # the second consecutive failure opens it

    # Open (for 1 s: checked first): calls are refused before they are sent.
    with pytest.raises(errors.CircuitOpen) as info:
        sp.execute("crash", {"code": 1}, timeout=30, app=app)
    assert info.value.details["state"] == "open"
    assert info.value.details["retry_in_ms"] <= 1000
    with pytest.raises(errors.CircuitOpen):
        sp.execute_async("ping", app=app)
    assert requests(n, app) == before + 1  # only the crash that opened it reached the pool
    wait_replaced(n, worker_id, crashed)
    # The refused crash never reached a worker: one restart only.
    assert int(snapshot(n, worker_id)["generation"]) == generation + 1
    assert requests(n, app) == before + 1

    # After the reset timeout: a failing trial opens it again at once.
    wait_until(lambda: breaker.state == "half_open", timeout=15, message="half_open")
    crashed = crash(n, app, wait=False)
    with pytest.raises(errors.CircuitOpen) as info:
        sp.execute("ping", timeout=30, app=app)
    assert info.value.details["state"] == "open"
    wait_replaced(n, worker_id, crashed)

    # After the reset timeout again: a good trial closes it.
    wait_until(lambda: breaker.state == "half_open", timeout=15, message="half_open again")
    assert_served_by(n, sp.execute("ping", timeout=30, app=app))
    assert breaker.state == "closed"
    assert sp.get_stats(n.pool, app=app)["circuit"] == "closed"
    for _ in range(3):
        assert sp.execute("ping", timeout=30, app=app)["status"] == "pong"
    assert breaker.stats()["opened"] == 2
