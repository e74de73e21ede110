"""Run calls with a timeout, with retries, behind a circuit breaker, or many at once.

Timeouts are in seconds (like ``execute(timeout=...)``). A Python thread cannot be killed: a
call that times out keeps running in a daemon thread, its result dropped. For snakepit calls
prefer the call's own ``timeout=``, which the node enforces with a gRPC deadline.
"""

from __future__ import annotations

import contextvars
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ALL_COMPLETED, FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from ..errors import CircuitOpen, ConfigurationError, ExecutionTimeout
from .circuit_breaker import CircuitBreaker
from .retry import RetryPolicy

T = TypeVar("T")

DEFAULT_MAX_CONCURRENCY = 10


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float)
        or math.isnan(timeout) or timeout <= 0
    ):
        raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")


def execute_with_timeout(fn: Callable[[], T], timeout: float | None) -> T:
    """``fn()``, or ExecutionTimeout when it has not returned within ``timeout`` seconds
    (``None``: no limit, ``fn`` runs in this thread). ``fn``'s own exceptions propagate."""
    _check_timeout(timeout)
    if timeout is None:
        return fn()
    done = threading.Event()
    outcome: dict[str, Any] = {}
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome["result"] = context.run(fn)
        except BaseException as exc:  # handed to the waiting thread
            outcome["error"] = exc
        finally:
            done.set()

    name = getattr(fn, "__qualname__", None) or repr(fn)
    threading.Thread(target=target, name=f"snakepit-timeout:{name}", daemon=True).start()
    if not done.wait(timeout):
        raise ExecutionTimeout(
            f"{name} did not finish within {timeout}s (it keeps running in the background; "
            "raise the timeout if the call is just slow)",
            {"timeout": timeout},
        )
    if "error" in outcome:
        raise outcome["error"]
    result: T = outcome["result"]
    return result


def execute_with_retry(fn: Callable[[], T], policy: RetryPolicy | None = None) -> T:
    """``fn()`` retried by ``policy`` (default :class:`RetryPolicy`): the last error is
    raised once the attempts are spent."""
    return (policy or RetryPolicy()).run(fn)


def execute_with_protection(
    fn: Callable[[], T],
    *,
    breaker: CircuitBreaker,
    policy: RetryPolicy | None = None,
    timeout: float | None = None,
) -> T:
    """``fn()`` behind ``breaker``, retried by ``policy`` (default :class:`RetryPolicy`), each
    attempt limited to ``timeout`` seconds. Every attempt is one breaker call; CircuitOpen is
    never retried (it is raised chained to the previous attempt's error, if any)."""
    _check_timeout(timeout)
    failures: list[BaseException] = []

    def attempt() -> T:
        try:
            return breaker.call(execute_with_timeout, fn, timeout)
        except CircuitOpen as exc:
            if failures and exc.__cause__ is None:
                raise exc from failures[-1]
            raise
        except Exception as exc:
            failures.append(exc)
            raise

    return (policy or RetryPolicy()).run(attempt)


def execute_batch(
    fns: Sequence[Callable[[], Any]],
    *,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    timeout: float | None = None,
    return_exceptions: bool = True,
) -> list[Any]:
    """Run every ``fn()``, at most ``max_concurrency`` at once; results in input order.

    ``timeout`` (seconds) limits each call; a call that overruns gives ExecutionTimeout (and
    frees its concurrency slot, though it keeps running in the background). With
    ``return_exceptions`` (default, like the original's per-item ``{:error, e}``) a failed
    item's exception object takes its place in the list; otherwise the first failure is raised
    once the calls already running have finished, and calls not yet started never start.
    """
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or (
        max_concurrency < 1
    ):
        raise ConfigurationError(
            f"max_concurrency must be an integer >= 1, got {max_concurrency!r}"
        )
    _check_timeout(timeout)
    fns = list(fns)
    if not fns:
        return []
    stop = threading.Event()  # set at the first failure when it is to be raised

    def run_item(fn: Callable[[], Any]) -> Any:
        if stop.is_set():
            return _NOT_RUN
        try:
            return execute_with_timeout(fn, timeout)
        except Exception:
            if not return_exceptions:
                stop.set()
            raise

    pool = ThreadPoolExecutor(
        max_workers=min(max_concurrency, len(fns)), thread_name_prefix="snakepit-batch"
    )
    try:
        futures: list[Future[Any]] = [
            pool.submit(contextvars.copy_context().run, run_item, fn) for fn in fns
        ]
        wait(futures, return_when=ALL_COMPLETED if return_exceptions else FIRST_EXCEPTION)
        if not return_exceptions:
            pool.shutdown(wait=True, cancel_futures=True)
            for f in futures:
                error = None if f.cancelled() else f.exception()
                if error is not None:
                    raise error
        return [f.exception() if _failed(f) else f.result() for f in futures]
    finally:
        pool.shutdown(wait=True)


_NOT_RUN = object()


def _failed(future: Future[Any]) -> bool:
    """Whether a finished future ended with an ``Exception`` (not KeyboardInterrupt & co)."""
    error = future.exception()
    return isinstance(error, Exception)
