"""The Celery task class that carries calls, ``snakepit.execute``.

Sending validates and routes the call (:mod:`snakepit_tasks.routing`); running it is the
node's business (``app.snakepit_node``), so a caller never loads node code.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.result import AsyncResult
from celery.utils.saferepr import saferepr
from kombu.exceptions import EncodeError

from . import connections, keys, kombu_redis, routing, telemetry
from .call import TASK_NAME, Call, _check_name
from .connections import redis_errors_as_snakepit
from .errors import ConfigurationError, SerializationError, SnakepitError
from .queues import declare_queue
from .serialization.redact import redact
from .zero_copy import process as zero_copy_process

EXECUTE = TASK_NAME
#: How many runs of one named job are remembered (see :mod:`snakepit_tasks.jobs`).
MAX_JOB_RUNS = 50
#: Longest argument preview in task events (what Flower shows).
ARGS_PREVIEW = 1024


class ExecuteTask(Task):
    """Runs one tool call on a worker of the node that receives it."""

    name = EXECUTE
    acks_late = True
    typing = False  # the call is validated by Call.parse, on both sides
    throws = (SnakepitError,)  # expected failures: logged without a traceback

    def run(self, *args: Any, **kwargs: Any) -> Any:
        node = getattr(self.app, "snakepit_node", None)
        if node is None:
            raise ConfigurationError(
                "snakepit.execute ran outside a snakepit node; start nodes with "
                "`snakepit-tasks worker` (task_always_eager is not supported)"
            )
        return node.run_task(self, args, kwargs)

    def shadow_name(self, args: Any, kwargs: Any, options: Any) -> str | None:
        """The name events, logs and Flower show for a call: the tool it runs."""
        command = (kwargs or {}).get("command")
        return command if isinstance(command, str) and command else None

    def apply_async(
        self, args: Any = None, kwargs: Any = None, **options: Any
    ) -> AsyncResult:
        """Validate, route and send the call. ``job="name"`` also records the run under that
        name for late readers (:mod:`snakepit_tasks.jobs`)."""
        job = options.pop("job", None)
        admission = options.pop("admission", None)  # the caller's circuit breaker, if any
        if job is not None:
            _check_name("job", job)
        settings = self.app.snakepit_settings
        if not _installed:
            _install()
        with redis_errors_as_snakepit("sending the call", settings.redis_url, settings.broker):
            route, push = _route(settings, args, kwargs, admission, "queue" in options)
            options.setdefault("queue", route.queue)
            options.setdefault("kwargsrepr", call_preview(route.call))
            task_id = options.setdefault("task_id", str(uuid.uuid4()))
            try:
                # With push: routed, checked and pushed in the publish's one round trip.
                with kombu_redis.pushing(route.queue.name, push):
                    result = super().apply_async((), route.call.to_kwargs(), **options)
            except EncodeError as exc:
                raise SerializationError(f"the call could not be encoded: {exc}") from None
            except SnakepitError:
                if push is not None:  # refused by the routing in the publish: not sent
                    self._not_sent(route.call, task_id)
                raise
            if job is not None:
                _record_job(settings, job, result.id, route.call)
        call = route.call
        telemetry.emit(("snakepit", "call", "sent"), {"system_time": time.time_ns()}, {
            "call_id": result.id, "tool": call.command, "pool": call.pool,
            "queue": route.queue.name, "session_id": call.session_id, "stream": call.stream})
        return result

    def _not_sent(self, call: Call, task_id: str) -> None:
        """A call refused in its publish: its large arguments are freed, and the result
        subscription Celery opened for it is closed."""
        zero_copy_process.discard_own(call.args)
        consumer = getattr(self.backend, "result_consumer", None)
        if consumer is not None:
            try:
                consumer.cancel_for(task_id)
            except Exception:
                pass


_installed = False


def _install() -> None:
    """Once per process that sends calls: kombu's publish of a call reuses one client per
    channel and honours :func:`kombu_redis.pushing`."""
    global _installed
    kombu_redis.install()
    _installed = True


def _route(
    settings: Any, args: Any, kwargs: Any, admission: Any, queue_given: bool
) -> tuple[routing.Route, Callable[[str, str], None] | None]:
    """The call's route; for a plain call to its pool's queue (no session, nothing required
    of the host, no queue given, the broker on snakepit's Redis) the routing is left to the
    publish (``push``: :func:`routing.push_plain`), else it is done now."""
    call = routing.parse(settings, args, kwargs)
    if (not queue_given and settings.broker == settings.redis_url
            and routing.is_plain(settings, call)):
        pool = call.pool or settings.default_pool_name
        route = routing.Route(call=call, queue=declare_queue(keys.pool_queue(pool)))
        return route, functools.partial(routing.push_plain, settings, call, admission)
    try:
        return routing.route(settings, call, admission), None
    except BaseException:
        zero_copy_process.discard_own(call.args)  # not sent: its large arguments are freed
        raise


def call_preview(call: Call) -> str:
    """What task events carry as the call's arguments: the tool's arguments and where it
    goes, truncated, with recognizable secrets redacted."""
    shown: dict[str, Any] = {}
    for name in ("pool", "session_id", "stream", "timeout"):
        value = getattr(call, name)
        if value:
            shown[name] = value
    shown["args"] = call.args  # last: what a long preview cuts
    routed = (value for name, value in shown.items() if name != "args")
    if _is_flat(call.args) and all(_is_plain(value) for value in routed):
        # saferepr writes what repr writes for these, at a fortieth of the cost
        text = repr(shown)
        if len(text) <= ARGS_PREVIEW:
            return redact(text)
    return redact(saferepr(shown, ARGS_PREVIEW))


#: Values whose repr saferepr writes unchanged (with plain text: see :func:`_is_plain_text`).
_SCALARS = (int, float, bool, type(None))
_SHORT_TEXT = 64


def _is_flat(args: Any) -> bool:
    """Whether ``args`` is None or a small dict of plain short strings and numbers."""
    if args is None:
        return True
    if type(args) is not dict or len(args) > 16:
        return False
    return all(type(key) is str and _is_plain_text(key) and _is_plain(value)
               for key, value in args.items())


def _is_plain(value: Any) -> bool:
    """A number, a bool, None or plain text: what saferepr writes as repr does."""
    return type(value) in _SCALARS or (type(value) is str and _is_plain_text(value))


def _is_plain_text(text: str) -> bool:
    """Short printable ASCII with no quote or backslash (saferepr quotes others its own way)."""
    return (len(text) <= _SHORT_TEXT and text.isascii() and text.isprintable()
            and "'" not in text and "\\" not in text)


def _record_job(settings: Any, job: str, task_id: str, call: Call) -> None:
    """Push ``task_id`` as the newest run of ``job``; kept while its stream stays readable."""
    deadline = call.deadline if call.deadline is not None else time.time()
    ttl = max(60, int(deadline - time.time()) + int(settings.stream_retention))
    key = keys.job_runs(job)
    with connections.redis_client(settings.redis_url).pipeline(transaction=True) as pipe:
        pipe.lpush(key, task_id)
        pipe.ltrim(key, 0, MAX_JOB_RUNS - 1)
        pipe.expire(key, ttl)
        pipe.execute()
