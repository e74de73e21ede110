"""The fast lane, caller side: a synchronous call pushed straight to a Redis list.

No Celery task protocol on the hot path: the call message (:class:`~snakepit_tasks.call.Call`
with its id) goes to the pool's or the bound node's fast-lane list, a node moves it atomically
into its own processing list (``BLMOVE``) and removes it only when the call has ended, and the
outcome comes back on the caller's reply list. Routing, sessions, queue limits, the breaker and
every error are the same as on the Celery lane.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from . import (
    connections,
    keys,
    kombu_redis,
    lua,
    replies,
    resp,
    routing,
    serialization,
    telemetry,
)
from .call import Call
from .config import Settings
from .queues import declare_queue
from .telemetry import tracing
from .zero_copy import process as zero_copy_process

if TYPE_CHECKING:
    from .resilience.circuit_breaker import Admission

#: How long a refusal waits in a reply list nobody pops (ms).
REFUSAL_TTL_MS = 60_000


def encode(call_id: str, call: Call, trace: dict[str, str] | None = None) -> bytes:
    """A fast-lane message (with the sender's trace context, when tracing is on)."""
    message: dict[str, Any] = {"id": call_id, "call": call.to_kwargs()}
    if trace:
        message["trace"] = trace
    return serialization.encode_args(message)


def encode_parts(
    call_id: str, call: Call, trace: dict[str, str] | None = None
) -> tuple[bytes, bytes]:
    """A fast-lane message cut where its ``worker`` and ``fallback`` fields go:
    ``head + encode_middle(worker, fallback) + tail`` is the message :func:`encode` writes for
    ``call`` with those two fields (the same bytes when the codec writes the parts as it
    writes the whole; ``broker/fast_send_session.lua`` joins them once it has chosen)."""
    fields = call.to_kwargs()
    names = list(fields)
    at = names.index("worker")
    before = {name: fields[name] for name in names[:at]}
    after = {name: fields[name] for name in names[at + 2:]}  # past worker and fallback
    head = serialization.encode_args({"id": call_id, "call": before})[:-2]  # open: no "}}"
    tail = b"," + serialization.encode_args(after)[1:] if after else b"}"
    if trace:
        return head, tail + b',"trace":' + serialization.encode_args(trace) + b"}"
    return head, tail + b"}"


def encode_middle(worker: str | None, fallback: bool) -> bytes:
    """The ``worker`` and ``fallback`` fields of a message (see :func:`encode_parts`)."""
    return (b',"worker":' + serialization.encode_args(worker) + b',"fallback":'
            + (b"true" if fallback else b"false"))


def decode(raw: bytes) -> tuple[str, dict[str, Any]]:
    """The id and task keyword arguments of a fast-lane message; ValueError when it is not
    one (the node turns that into a dead letter)."""
    call_id, kwargs, _ = decode_traced(raw)
    return call_id, kwargs


def decode_traced(raw: bytes) -> tuple[str, dict[str, Any], dict[str, str]]:
    """:func:`decode`, plus the trace context the message carries ({} when none)."""
    message = serialization.decode(raw)
    if not isinstance(message, dict):
        raise ValueError(f"a fast-lane message is an object, got {type(message).__name__}")
    call_id, kwargs = message.get("id"), message.get("call")
    if not isinstance(call_id, str) or not call_id or not isinstance(kwargs, dict):
        raise ValueError("a fast-lane message needs an 'id' string and a 'call' object")
    trace = message.get("trace")
    carrier = {str(k): str(v) for k, v in trace.items()} if isinstance(trace, dict) else {}
    return call_id, kwargs, carrier


def send(
    settings: Settings,
    args: Any,
    kwargs: Any,
    admission: Admission | None = None,
    wait_until: float | None = None,
) -> tuple[str, bytes | None]:
    """Validate and route a call, push it to its fast-lane list: its id, and its reply when
    ``wait_until`` (epoch seconds) is given and the reply came by then (or within
    ``replies.MAX_BLOCK_SECONDS``), else None.

    The wait for the reply rides in the same round trip as the push. ``admission`` (the
    pool's circuit breaker) is settled in routing's round trip: a call to its pool's list (no
    session, nothing required of the host) is admitted, checked, pushed and waited for in one
    round trip (``broker/fast_send.lua``), and so is a call of a session bound where this
    process saw it last (``broker/fast_send_session.lua``); other calls are routed first
    (one or two trips).
    """
    call = routing.parse(settings, args, kwargs)
    call_id = str(uuid.uuid4())
    r = connections.redis_client(settings.redis_url)
    sent_at = time.time_ns()
    try:
        with tracing.span(f"snakepit.publish {call.command}", {"snakepit.call_id": call_id},
                          kind="producer"):
            block = replies.block_seconds(wait_until) if wait_until is not None else None
            sent: tuple[routing.Route, bytes | None] | None
            if routing.is_plain(settings, call):
                sent = _send_plain(settings, r, call, call_id, admission, block)
            else:  # a bound session's call: one round trip too, while it is bound as seen
                sent = _send_session(settings, r, call, call_id, admission, block)
            if sent is None:
                route = routing.route(settings, call, admission)
                with r.pipeline(transaction=False) as pipe:
                    pipe.lpush(route.fast_queue, encode(call_id, route.call, tracing.inject({})))
                    if block is not None:
                        pipe.blpop([keys.reply(call_id)], timeout=block)
                    answers = pipe.execute()
                body = replies.popped(answers[1]) if block is not None else None
            else:
                route, body = sent
    except BaseException:
        zero_copy_process.discard_own(call.args)  # not sent: its large arguments are freed
        raise
    call = route.call
    telemetry.emit(("snakepit", "call", "sent"), {"system_time": sent_at}, {
        "call_id": call_id, "tool": call.command, "pool": call.pool,
        "queue": route.fast_queue, "session_id": call.session_id, "stream": call.stream})
    return call_id, body


def _send_plain(
    settings: Settings,
    r: Any,
    call: Call,
    call_id: str,
    admission: Admission | None,
    block: float | None,
) -> tuple[routing.Route, bytes | None]:
    """Admit, check, push and (``block`` seconds) wait for a call to its pool's list, in one
    round trip: ``broker/fast_send.lua`` and a BLPOP of the reply list behind it (the script
    pushes a refusal there when it sends nothing, so the BLPOP returns at once). Raises what
    routing raises (CircuitOpen, NoWorkersAvailable, QueueFull), having sent nothing."""
    pool = call.pool or settings.default_pool_name
    queue_name = keys.pool_queue(pool)
    breaker_keys, breaker_args = routing.breaker_script_args(admission, pool)
    reply_key = keys.reply(call_id)
    script_keys = [*breaker_keys, keys.fast_pool_queue(pool), keys.pool_alive(pool), reply_key,
                   *kombu_redis.queue_lists(queue_name)]
    script_args = [*breaker_args, settings.pool_max_queue_size,
                   encode(call_id, call, tracing.inject({})), "0" if block is None else "1",
                   REFUSAL_TTL_MS]
    sent, body = _eval_and_wait(r, "fast_send", script_keys, script_args, reply_key, block)
    status, waiting, verdict = connections.text(sent[0]), int(sent[1]), sent[2]
    if admission is not None:
        admission.settle(verdict)  # CircuitOpen when it refused
    if status == "gone":
        raise routing.missing_pool_error(settings, r, pool)
    if status == "full":
        raise routing.queue_full(settings, r, pool, queue_name, waiting)
    return routing.Route(call=call, queue=declare_queue(queue_name)), body


def _send_session(
    settings: Settings,
    r: Any,
    call: Call,
    call_id: str,
    admission: Admission | None,
    block: float | None,
) -> tuple[routing.Route, bytes | None] | None:
    """Route, admit, check, push and (``block`` seconds) wait for a call of a bound session in
    one round trip: ``broker/fast_send_session.lua`` and a BLPOP of the reply list behind it
    (a refusal is pushed there when it sends nothing). Raises what routing raises, having
    sent nothing (a hint session whose worker is gone or tainted is unbound even so, as
    routing does). None, having done nothing, for a call :func:`routing.session_send` leaves
    to routing, or when the session is no longer bound where this process saw it last:
    routing takes the call the long way then."""
    session = routing.session_send(settings, call)
    if session is None:
        return None
    call = session.call
    pool, node = session.pool, session.node
    breaker_keys, breaker_args = routing.breaker_script_args(admission, pool)
    reply_key = keys.reply(call_id)
    node_lists = kombu_redis.queue_lists(keys.node_queue(node))
    script_keys = [*breaker_keys, keys.session(session.session_id), keys.sessions(),
                   keys.pool_alive(pool), reply_key, keys.node_lease(node),
                   keys.node_workers(node), keys.busy(node), keys.taint(session.worker),
                   keys.fast_node_queue(node), keys.fast_pool_queue(pool), *node_lists,
                   *kombu_redis.queue_lists(keys.pool_queue(pool))]
    head, tail = encode_parts(call_id, call, tracing.inject({}))
    script_args = [*breaker_args, settings.pool_max_queue_size, session.worker, node,
                   call.affinity or "hint", "0" if session.reentry is None else "1",
                   session.session_id, len(node_lists), head, tail,
                   encode_middle(session.worker, call.fallback),  # the bound worker's
                   encode_middle(call.worker, True),  # a hint call's fallback
                   encode_middle(call.worker, call.fallback),  # rebound: as it is
                   "0" if block is None else "1", REFUSAL_TTL_MS]
    sent, body = _eval_and_wait(r, "fast_send_session", script_keys, script_args, reply_key,
                                block)
    route = routing.session_sent(settings, r, session, sent, admission)
    if route is None:
        return None
    return route, body


def _eval_and_wait(
    r: Any,
    script: str,
    script_keys: list[str],
    script_args: list[Any],
    reply_key: str,
    block: float | None,
) -> tuple[Any, bytes | None]:
    """Run ``broker/<script>.lua`` and, when ``block`` is given, wait that long for the reply
    list behind it, in one round trip: the script's reply and the reply popped (or None)."""
    # EVAL, not EVALSHA: a script Redis lost (a restart) must not leave the BLPOP waiting.
    commands = [resp.pack("EVAL", lua.compact(script), len(script_keys), *script_keys,
                          *script_args)]
    if block is not None:
        commands.append(resp.pack("BLPOP", reply_key, block))
    answers = resp.raise_first_error(resp.round_trip(r, *commands))
    return answers[0], replies.popped(answers[1]) if block is not None else None
