"""The caller API: execute tools by name, poll results, inspect pools."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult

from . import (
    connections,
    dead_letters,
    fast_lane,
    keys,
    lua,
    pool_state,
    replies,
    telemetry,
    zero_copy,
)
from .app import default_app
from .call import TASK_NAME, timeout_seconds
from .errors import ConfigurationError, ExecutionTimeout, QueueTimeout
from .resilience import CircuitBreaker, HealthMonitor, RetryPolicy, breaker_for
from .resilience.circuit_breaker import Admission
from .telemetry import tracing

# Seconds a caller waits past a call's deadline for the node's own verdict.
RESULT_GRACE_SECONDS = 5.0


def _app(app: Celery | None) -> Celery:
    return app or default_app()


def execute_async(
    command: str,
    args: dict[str, Any] | None = None,
    *,
    pool: str | None = None,
    timeout: float | None = None,
    app: Celery | None = None,
    requires: Sequence[str] | None = None,
) -> AsyncResult:
    """Send a call; returns the Celery ``AsyncResult`` (``.get()`` gives the tool's result)."""
    return send(_app(app), command, args, pool=pool, timeout=timeout, requires=requires)


def send(app: Celery, command: str, args: dict[str, Any] | None, **kwargs: Any) -> AsyncResult:
    """Send one call whose outcome this process does not wait for here: rejected with
    CircuitOpen while the pool's breaker is open, and not counted by it."""
    guard = breaker(app, kwargs.get("pool"), command)
    # The breaker's check runs in routing's round trip (ExecuteTask.apply_async).
    admission = Admission(guard, "check") if guard is not None else None
    with tracing.span(f"snakepit.send {command}", {"snakepit.pool": kwargs.get("pool")},
                      kind="client"):
        return app.tasks[TASK_NAME].apply_async((command, args), kwargs, admission=admission)


def execute(
    command: str,
    args: dict[str, Any] | None = None,
    *,
    pool: str | None = None,
    timeout: float | None = None,
    retry: RetryPolicy | bool | None = None,
    app: Celery | None = None,
    requires: Sequence[str] | None = None,
) -> Any:
    """Run tool ``command`` with keyword arguments ``args`` on a worker; return its result.

    ``timeout`` (seconds) bounds queueing plus execution; the default is the
    ``default_command_timeout`` setting. A call no worker takes within ``pool_queue_timeout``
    fails with QueueTimeout and never runs. ``retry`` re-sends the call on the errors its
    policy names; ``retry=True`` uses the policy of the ``retry_*`` settings. The pool's
    circuit breaker fails calls fast while it is open. ``requires`` names capabilities the
    serving host must have (``["cuda"]``; see ``sp.hardware.capabilities()``): DeviceNotAvailable
    at once when no live node has them. Errors are :mod:`snakepit_tasks.errors` classes.
    """
    return _run_and_wait(_app(app), command, args, pool=pool, timeout=timeout, retry=retry,
                         requires=requires)


def execute_in_session_async(
    session_id: str,
    command: str,
    args: dict[str, Any] | None = None,
    *,
    pool: str | None = None,
    timeout: float | None = None,
    affinity: str | None = None,
    app: Celery | None = None,
    requires: Sequence[str] | None = None,
) -> AsyncResult:
    """Send a call of session ``session_id``; returns the Celery ``AsyncResult``."""
    return send(
        _app(app), command, args,
        pool=pool, timeout=timeout, session_id=session_id, affinity=affinity, requires=requires,
    )


def execute_in_session(
    session_id: str,
    command: str,
    args: dict[str, Any] | None = None,
    *,
    pool: str | None = None,
    timeout: float | None = None,
    affinity: str | None = None,
    retry: RetryPolicy | bool | None = None,
    app: Celery | None = None,
    requires: Sequence[str] | None = None,
) -> Any:
    """Like :func:`execute`, on the worker that holds session ``session_id``.

    ``affinity`` ("hint", "strict_queue", "strict_fail_fast") overrides the pool's mode.
    """
    return _run_and_wait(
        _app(app), command, args, pool=pool, timeout=timeout, session_id=session_id,
        affinity=affinity, retry=retry, requires=requires,
    )


def breaker(app: Celery, pool: str | None, command: str) -> CircuitBreaker | None:
    """The circuit breaker guarding calls of ``command`` to ``pool`` (None when disabled)."""
    settings = app.snakepit_settings
    if not settings.circuit_breaker_enabled:
        return None
    pool = pool or settings.default_pool_name
    tool = command if settings.circuit_breaker_per_tool else None
    key = (settings.redis_url, pool, tool, id(settings))
    found = _breakers.get(key)
    if found is None:
        found = _breakers[key] = breaker_for(settings, pool, tool)
    return found


_breakers: dict[tuple[Any, ...], CircuitBreaker] = {}


def guarded(app: Celery, pool: str | None, command: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` (one whole call) through the pool's circuit breaker: CircuitOpen at once,
    without sending, while it is open; the call's outcome counted when it ends."""
    guard = breaker(app, pool, command)
    if guard is None:
        return fn()
    admission = Admission(guard)
    admission.admit()
    return _counted(admission, fn)


def _counted(admission: Admission, fn: Callable[[], Any]) -> Any:
    """``fn()``, its outcome recorded by the breaker that admitted it."""
    try:
        value = fn()
    except BaseException as exc:
        admission.record(exc)
        raise
    admission.record(None)
    return value


def _run_and_wait(
    app: Celery,
    command: str,
    args: dict[str, Any] | None,
    *,
    retry: RetryPolicy | bool | None = None,
    **options: Any,
) -> Any:
    def once() -> Any:
        settings = app.snakepit_settings
        with connections.redis_errors_as_snakepit(
            f"running {command!r}", settings.redis_url, settings.broker
        ):
            return _admitted(app, command, args, **options)

    policy = retry_policy(app, retry)
    began, failure = time.perf_counter_ns(), None
    try:
        with tracing.span(f"snakepit.execute {command}", {"snakepit.pool": options.get("pool")},
                          kind="client"):
            return policy.run(once) if policy is not None else once()
    except Exception as exc:
        failure = exc
        raise
    finally:
        telemetry.emit(("snakepit", "call", "returned"),
                       {"duration_us": (time.perf_counter_ns() - began) // 1000},
                       {"tool": command,
                        "pool": options.get("pool") or app.snakepit_settings.default_pool_name,
                        "success": failure is None,
                        "error": type(failure).__name__ if failure else None})


def retry_policy(app: Celery, retry: RetryPolicy | bool | None) -> RetryPolicy | None:
    """The policy a call's ``retry=`` names: True → the ``retry_*`` settings' policy."""
    if retry is True:
        return RetryPolicy.from_settings(app.snakepit_settings)
    if retry is None or retry is False:
        return None
    if not isinstance(retry, RetryPolicy):
        raise ConfigurationError(
            f"retry must be a RetryPolicy, True or None, got {type(retry).__name__}"
        )
    return retry


def _admitted(app: Celery, command: str, args: dict[str, Any] | None, **options: Any) -> Any:
    """One call through the pool's circuit breaker, admitted in the round trip that routes it
    (CircuitOpen at once, nothing sent, while it is open); its outcome counted when it ends."""
    guard = breaker(app, options.get("pool"), command)
    if guard is None:
        return _send_and_wait(app, command, args, None, **options)
    admission = Admission(guard)
    return _counted(admission, lambda: _send_and_wait(app, command, args, admission, **options))


def _send_and_wait(
    app: Celery,
    command: str,
    args: dict[str, Any] | None,
    admission: Admission | None,
    **options: Any,
) -> Any:
    settings = app.snakepit_settings
    seconds = timeout_seconds(options.get("timeout"), settings.default_command_timeout)
    deadline = time.time() + seconds
    kwargs = {**options, "deadline": deadline, "reply": True}
    # The reply comes straight back through Redis: no result-backend entry, no per-call
    # subscription (both cost round trips and serialise threaded callers).
    result: AsyncResult | None = None
    r = connections.redis_client(settings.redis_url)
    queue_deadline = time.time() + settings.pool_queue_timeout / 1000
    first_wait = queue_deadline if queue_deadline < deadline else deadline + RESULT_GRACE_SECONDS
    body: bytes | None = None
    if settings.fast_lane:  # the first wait for the reply rides with the push
        call_id, body = fast_lane.send(settings, (command, args), kwargs, admission, first_wait)
    else:
        result = app.tasks[TASK_NAME].apply_async((command, args), kwargs, ignore_result=True,
                                                  admission=admission)
        call_id = result.id
    if queue_deadline < deadline:
        if body is None:
            body = replies.pop(r, call_id, queue_deadline)
        if body is not None:
            return replies.outcome(body, settings)
        if give_up(app, call_id, options.get("pool") or settings.default_pool_name):
            telemetry.emit(("snakepit", "call", "queue_timeout"),
                           {"timeout_ms": settings.pool_queue_timeout},
                           {"call_id": call_id, "tool": command,
                            "pool": options.get("pool") or settings.default_pool_name})
            raise QueueTimeout(
                f"no worker took call {command!r} within pool_queue_timeout "
                f"({settings.pool_queue_timeout} ms); it will not run",
                {"task_id": call_id},
            )
    if body is not None:
        return replies.outcome(body, settings)
    body = replies.pop(r, call_id, deadline + RESULT_GRACE_SECONDS)
    if body is None:
        if result is not None:
            result.revoke()
        raise ExecutionTimeout(
            f"no result for call {command!r} ({call_id}) within {seconds:g} s (its timeout)",
            {"task_id": call_id, "timeout": seconds},
        )
    return replies.outcome(body, settings)


def give_up(app: Celery, call_id: str, pool: str) -> bool:
    """Mark a call timed out unless a node started it; True when it will never run."""
    r = connections.redis_client(app.snakepit_settings.redis_url)
    script = lua.script(r, "give_up_call")
    return bool(script(keys=[keys.call_state(call_id), keys.pool_stats(pool)], args=[60_000]))


def wait(result: AsyncResult, timeout: float | None = None) -> Any:
    """Wait up to ``timeout`` seconds for a call's result; raise ExecutionTimeout after."""
    try:
        value = result.get(timeout=timeout, propagate=True, disable_sync_subtasks=False)
    except CeleryTimeoutError:
        result.revoke()
        raise ExecutionTimeout(
            f"no result for call {result.id} within {timeout}s", {"task_id": result.id}
        ) from None
    # Zero-copy handles in the backend's result become tables and arrays.
    return zero_copy.resolve(value, result.app.snakepit_settings.zero_copy_transport)


def get_result(task_id: str, *, app: Celery | None = None) -> AsyncResult:
    """The ``AsyncResult`` of a call sent earlier (by any process), by its id."""
    return _app(app).AsyncResult(task_id)


def list_workers(pool: str | None = None, *, app: Celery | None = None) -> list[str]:
    """Ids of the workers of live nodes serving ``pool`` (default pool if None)."""
    settings = _app(app).snakepit_settings
    r = connections.redis_client(settings.redis_url)
    nodes = pool_state.live_nodes(r, pool or settings.default_pool_name)
    return [w["id"] for n in nodes for w in n["workers"]]


def get_stats(pool: str | None = None, *, app: Celery | None = None) -> dict[str, Any]:
    """Counters and current load of ``pool`` (default pool if None)."""
    settings = _app(app).snakepit_settings
    pool = pool or settings.default_pool_name
    r = connections.redis_client(settings.redis_url)
    nodes = pool_state.live_nodes(r, pool)
    counters = pool_state.read_counters(r, pool)
    workers = [w for n in nodes for w in n["workers"]]
    ready = [w for w in workers if w["state"] == "ready"]
    busy = sum(1 for w in ready if w["inflight"] >= w["capacity"])
    queued = pool_state.waiting(r, keys.pool_queue(pool), keys.fast_pool_queue(pool)) + sum(
        pool_state.waiting(r, keys.node_queue(n["name"]), keys.fast_node_queue(n["name"]))
        for n in nodes
    )
    return {
        "pool": pool,
        "requests": counters.get("requests", 0),
        "errors": counters.get("errors", 0),
        "queue_timeouts": counters.get("queue_timeouts", 0),
        "pool_saturated": counters.get("pool_saturated", 0),
        "queued": queued,
        "dead_letters": dead_letters.count(r, pool),
        "nodes": len(nodes),
        "workers": len(workers),
        "busy": busy,
        "available": len(ready) - busy,
        "capacity": sum(w["capacity"] for w in ready),
        "circuit": breaker_for(settings, pool).state if settings.circuit_breaker_enabled else None,
        "healthy": HealthMonitor(pool, redis=r, settings=settings).healthy(),
    }


def await_ready(
    pool: str | None = None, timeout: float = 15.0, *, app: Celery | None = None
) -> list[str]:
    """Wait until ``pool`` has a ready worker; return the ready ids, or raise TimeoutError."""
    settings = _app(app).snakepit_settings
    pool = pool or settings.default_pool_name
    r = connections.redis_client(settings.redis_url)
    deadline = time.monotonic() + timeout
    while True:
        nodes = pool_state.live_nodes(r, pool)
        ready = [w["id"] for n in nodes for w in n["workers"] if w["state"] == "ready"]
        if ready:
            return ready
        if time.monotonic() >= deadline:
            raise TimeoutError(f"pool {pool!r} had no ready worker within {timeout:.1f}s")
        time.sleep(0.05)
