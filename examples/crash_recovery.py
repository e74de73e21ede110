"""Crash recovery: a worker that dies mid-call, its restart, the health window, retries with
backoff, and a circuit breaker that fails fast and recovers.

    python examples/crash_recovery.py
"""

from __future__ import annotations

import time

from _common import say, use_pool

import snakepit_tasks as sp
from snakepit_tasks.resilience import RetryPolicy, execute_with_retry


def main() -> None:
    settings = sp.default_app().snakepit_settings
    pool = settings.default_pool_name

    # 1. Crash barrier: the call fails with WorkerCrashed; the worker is restarted.
    try:
        sp.execute("crash", {"code": 3})
    except sp.errors.WorkerCrashed as exc:
        say("execute('crash') raised WorkerCrashed", exc)
    pong = sp.execute("ping")
    say("the pool still serves", f"{pong['status']} from {pong['worker_id']}")

    # 2. Health: crashes within the window, shared by every process through Redis.
    health = sp.HealthMonitor(pool, settings=settings)
    deadline = time.monotonic() + 10  # the node records a crash when it sees the exit
    while health.crashes() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    say("HealthMonitor", {k: v for k, v in health.stats().items()
                          if k in ("crashes", "max_crashes", "healthy")})

    # 3. Retry: a call that crashes once succeeds on the second attempt.
    attempts = []

    def flaky() -> dict:
        attempts.append(time.monotonic())
        return sp.execute("crash" if len(attempts) == 1 else "ping", {"code": 1}
                          if len(attempts) == 1 else None)

    policy = RetryPolicy(max_attempts=3, backoff_ms=(100, 200), jitter=0.0)
    say("execute_with_retry(flaky)", f"{execute_with_retry(flaky, policy)['status']} after "
        f"{len(attempts)} attempts")

    # 4. Circuit breaker: two failures open it, calls then fail fast, a trial closes it.
    breaker = sp.CircuitBreaker(f"{pool}-example", failure_threshold=2, reset_timeout_ms=500,
                                settings=settings)
    breaker.reset()
    for _ in range(2):
        try:
            breaker.call(sp.execute, "crash", {"code": 1})
        except sp.errors.WorkerCrashed:
            pass
    say("after 2 crashes the breaker is", breaker.state)
    try:
        breaker.call(sp.execute, "ping")
    except sp.errors.CircuitOpen as exc:
        say("a call while open raised CircuitOpen", exc)
    time.sleep(0.6)
    say("after reset_timeout a trial call", breaker.call(sp.execute, "ping")["status"])
    say("the breaker is", breaker.state)
    breaker.reset()


if __name__ == "__main__":
    use_pool(pool_size=2)
    sp.run_as_script(main, exit_mode="stop")
