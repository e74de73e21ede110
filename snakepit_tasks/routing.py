"""Where a call goes: validation before anything is sent, and the queue it travels in."""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kombu import Queue
from redis.exceptions import NoScriptError

from . import (
    connections,
    hardware,
    keys,
    kombu_redis,
    lua,
    pool_state,
    serialization,
    session_store,
    telemetry,
)
from .call import Call
from .config import AFFINITY_MODES, Settings
from .errors import (
    ConfigurationError,
    DeviceNotAvailable,
    NoWorkersAvailable,
    PoolNotFound,
    QueueFull,
    SerializationError,
    SessionWorkerUnavailable,
    SnakepitError,
    WorkerBusy,
)
from .host_tools.context import check_reentry
from .queues import declare_queue
from .zero_copy import Options
from .zero_copy import process as zero_copy_process
from .zero_copy.host import host_id

if TYPE_CHECKING:
    from .resilience.circuit_breaker import Admission


@dataclass(frozen=True)
class Route:
    """A validated call and the queue it travels in: its pool's, or one node's (``node``)."""

    call: Call
    queue: Queue
    node: str | None = None

    @property
    def fast_queue(self) -> str:
        """The fast-lane list for the same destination."""
        if self.node:
            return keys.fast_node_queue(self.node)
        return keys.fast_pool_queue(self.pool)

    @property
    def kwargs(self) -> dict[str, Any]:
        """The call as the task's keyword arguments."""
        return self.call.to_kwargs()

    @property
    def pool(self) -> str:
        return self.call.pool or ""

    @property
    def deadline(self) -> float:
        return float(self.call.deadline or 0.0)


def parse(settings: Settings, args: Any, kwargs: Any) -> Call:
    """Validate a call with the caller's defaults (pool, deadline, queue clock)."""
    call = Call.parse(
        args,
        kwargs,
        default_pool=settings.default_pool_name,
        default_timeout_ms=settings.default_command_timeout,
        streaming_timeout_ms=settings.pool_streaming_timeout,
    )
    export = zero_copy_process.LazyExport(lambda: _begin_export(settings, call))
    try:
        data = serialization.encode_args(call.args, export.default)
    except BaseException:
        export.abandon()
        raise
    if export.started:  # large data left as handles, small as inline Arrow: plain JSON now
        call = call.replace(args=serialization.decode(data))
    size = len(data)
    if size > settings.max_call_bytes:
        export.abandon()
        raise SerializationError(
            f"the call's arguments are {size} bytes, over max_call_bytes "
            f"({settings.max_call_bytes}); pass large data by reference or through the "
            "zero-copy path, or raise the limit",
            {"size": size, "limit": settings.max_call_bytes},
        )
    return call


def _begin_export(settings: Settings, call: Call) -> Any:
    """The export of a call's large arguments: shared memory of this process, and Arrow
    Flight when asked (``zero_copy_transport="flight"``) or when a node of the pool lives on
    another host (``auto``)."""
    options = Options.from_settings(settings)
    flight = options.transport == "flight"
    if options.transport == "auto":
        r = connections.redis_client(settings.redis_url)
        here = host_id()
        nodes = pool_state.live_nodes(r, call.pool or settings.default_pool_name)
        flight = any(n.get("host_id") != here for n in nodes)
    exporter = zero_copy_process.exporter(options, f"caller pid {os.getpid()}")
    return exporter.begin(arguments=True, offer_flight=flight)


def prepare(
    settings: Settings, args: Any, kwargs: Any, admission: Admission | None = None
) -> Route:
    """Validate a call and decide its queue; raise before anything is sent. ``admission``
    (the pool's circuit breaker) is settled in the same round trip as the routing reads."""
    call = parse(settings, args, kwargs)
    try:
        return route(settings, call, admission)
    except BaseException:
        zero_copy_process.discard_own(call.args)  # not sent: its large arguments are freed
        raise


def route(settings: Settings, call: Call, admission: Admission | None = None) -> Route:
    """Decide the queue of a call :func:`parse` validated (see :func:`prepare`)."""
    pool = call.pool or settings.default_pool_name
    session_id = call.session_id
    r = connections.redis_client(settings.redis_url)
    queue_name = keys.pool_queue(pool)
    guess = _bindings.get(session_id) if session_id else None

    def reads(pipe: Any) -> None:
        if admission is not None:  # first, as if it ran alone before routing
            _admit_into(pipe, admission)
        pipe.exists(keys.pool_alive(pool))
        if session_id:  # the queue it waits in depends on the binding: its length later
            pipe.hmget(keys.session(session_id), "worker", "node")
            if guess is not None:  # the binding seen last time: read its worker's state now
                _worker_state_into(pipe, *guess)
        else:
            pool_state.lengths_into(pipe, queue_name, keys.fast_pool_queue(pool))

    replies = _pipelined(r, reads)  # one round trip for the common case
    if admission is not None:
        admission.settle(replies.pop(0))
    if not replies[0]:
        raise missing_pool_error(settings, r, pool)
    waiting: int | None = None if session_id else int(sum(replies[1:]))
    node = None
    requires = required(settings, pool, call.requires)
    capable_node = _capable_node(r, pool, requires) if requires else None
    if session_id:
        call = call.replace(affinity=affinity_for(settings, pool, call.affinity))
        bound_worker, bound_node = (connections.text(v) if v else None for v in replies[1])
        if bound_worker and bound_node:
            seen = (bound_worker, bound_node)
            if seen == guess:  # read in the same round trip
                state = replies[2:]
            else:
                state = _worker_state(r, bound_worker, bound_node)
                _remember(session_id, seen)
            call, queue_name, node_waiting = _session_route(
                r, call, session_id, bound_worker, bound_node, state)
            if queue_name != keys.pool_queue(pool):
                node, waiting = bound_node, node_waiting
        else:
            _bindings.pop(session_id, None)
    if capable_node and queue_name == keys.pool_queue(pool):
        queue_name = keys.node_queue(capable_node)  # not every node of the pool can run it
        node = capable_node
        waiting = pool_state.waiting(r, queue_name, keys.fast_node_queue(capable_node))
    if waiting is None:  # a session's first call, or one routed back to the pool
        waiting = pool_state.waiting(r, queue_name, keys.fast_pool_queue(pool))
    if waiting >= settings.pool_max_queue_size:
        raise queue_full(settings, r, pool, queue_name, waiting)
    return Route(call=call, queue=declare_queue(queue_name), node=node)


def breaker_script_args(admission: Admission | None, pool: str) -> tuple[list[str], list[Any]]:
    """The circuit breaker's keys and arguments for ``broker/fast_send.lua`` (no admission:
    nothing to admit)."""
    if admission is not None:
        return admission.breaker.keys, admission.breaker.argv(admission.op)
    return [keys.circuit(pool), keys.circuit_trials(pool)], ["", 0, 0, 0, "", 0]


def push_plain(
    settings: Settings, call: Call, admission: Admission | None, target: str, message: str
) -> None:
    """Route and send a call :func:`is_plain` says goes to its pool's queue, in one round
    trip: ``broker/fast_send.lua`` admits it (``admission``), checks that a node serves the
    pool and that fewer than ``pool_max_queue_size`` calls wait (both lanes), and LPUSHes the
    Celery ``message`` to ``target`` (the queue's list for its priority). Raises what
    :func:`route` raises (CircuitOpen, NoWorkersAvailable, QueueFull), having pushed nothing."""
    pool = call.pool or settings.default_pool_name
    queue_name = keys.pool_queue(pool)
    r = connections.redis_client(settings.redis_url)
    breaker_keys, breaker_args = breaker_script_args(admission, pool)
    counted = [name for name in kombu_redis.queue_lists(queue_name) if name != target]
    # KEYS[5], the reply list, is not used: no BLPOP follows (ARGV[9] '0').
    script_keys = [*breaker_keys, target, keys.pool_alive(pool), target,
                   *counted, keys.fast_pool_queue(pool)]
    script_args = [*breaker_args, settings.pool_max_queue_size, message, "0", 0]
    reply = lua.run(r, "fast_send", script_keys, script_args)
    status, waiting = connections.text(reply[0]), int(reply[1])
    if admission is not None:
        admission.settle(reply[2])  # CircuitOpen when it refused
    if status == "gone":
        raise missing_pool_error(settings, r, pool)
    if status == "full":
        raise queue_full(settings, r, pool, queue_name, waiting)


def is_plain(settings: Settings, call: Call) -> bool:
    """Whether ``call`` goes to its pool's queue whatever Redis holds: no session, and
    nothing required of the host that only some nodes may have."""
    return not call.session_id and not required(
        settings, call.pool or settings.default_pool_name, call.requires)


def queue_full(settings: Settings, r: Any, pool: str, queue_name: str, waiting: int) -> QueueFull:
    """QueueFull for a call refused because ``waiting`` calls wait (counted and emitted)."""
    pool_state.count(r, pool, pool_saturated=1)
    telemetry.emit(("snakepit", "pool", "saturated"),
                   {"queued": waiting, "max_queue_size": settings.pool_max_queue_size},
                   {"pool": pool, "queue": queue_name})
    return QueueFull(
        f"{waiting} calls already wait in {queue_name} (pool_max_queue_size is "
        f"{settings.pool_max_queue_size}); retry later or add workers",
        {"pool": pool, "queued": waiting},
    )


def _admit_into(pipe: Any, admission: Admission) -> None:
    """Queue the breaker's script on ``pipe`` by its SHA (see :func:`_pipelined`)."""
    breaker = admission.breaker
    sha = lua.script(breaker.redis, "circuit_breaker").sha
    pipe.evalsha(sha, len(breaker.keys), *breaker.keys, *breaker.argv(admission.op))


def _pipelined(r: Any, build: Callable[[Any], None]) -> list[Any]:
    """Run the commands ``build`` queues in one round trip. A script Redis does not know yet
    (first use, or after a restart) is loaded and the whole batch sent again: a batch whose
    script was refused ran only reads."""
    for attempt in range(2):
        with r.pipeline(transaction=False) as pipe:
            build(pipe)
            replies: list[Any] = pipe.execute(raise_on_error=False)
        if attempt == 0 and any(isinstance(x, NoScriptError) for x in replies):
            script = lua.script(r, "circuit_breaker")
            script.sha = r.script_load(script.script)
            continue
        for x in replies:
            if isinstance(x, Exception):
                raise x
        return replies
    raise AssertionError("unreachable")


def required(settings: Settings, pool: str, requires: tuple[str, ...]) -> tuple[str, ...]:
    """What a call needs of its host: its own ``requires`` and its pool's."""
    for p in settings.pools:
        if p.name == pool and p.requires:
            return tuple(dict.fromkeys((*p.requires, *requires)))
    return requires


def _capable_node(r: Any, pool: str, requires: tuple[str, ...]) -> str | None:
    """None when every live node of ``pool`` has ``requires``, else one that has (picked at
    random); DeviceNotAvailable, naming the requirement, when none has."""
    nodes = pool_state.live_nodes(r, pool)
    capable, seen = [], []
    for node in nodes:
        try:
            caps = json.loads(node.get("capabilities") or "{}")
        except ValueError:
            caps = {}
        lacking = hardware.missing(requires, caps)
        seen.append(f"{node['name']} lacks {', '.join(lacking)}" if lacking else node["name"])
        if not lacking:
            capable.append(node["name"])
    if not capable:
        raise DeviceNotAvailable(
            f"no live node of pool {pool!r} has {', '.join(requires)} "
            f"({'; '.join(seen) or 'no live node'}); start the pool on a host that has it",
            {"pool": pool, "requires": list(requires), "nodes": seen},
        )
    return None if len(capable) == len(nodes) else random.choice(capable)


def affinity_for(settings: Settings, pool: str, requested: str | None) -> str:
    """The affinity mode of a call: per call, else the pool's, else the global setting."""
    if requested is not None:
        if requested not in AFFINITY_MODES:
            raise ConfigurationError(
                f"affinity must be one of {', '.join(AFFINITY_MODES)}, got {requested!r}"
            )
        return requested
    for p in settings.pools:
        if p.name == pool and p.affinity:
            return p.affinity
    return settings.affinity


#: The binding (worker, node) this process last saw per session: the next call of the session
#: reads that worker's state in the same round trip as the binding itself, and uses it only
#: when the binding is still that one.
_bindings: dict[str, tuple[str, str]] = {}
_bindings_lock = threading.Lock()  # callers route from many threads
MAX_BINDINGS = 10_000


def _remember(session_id: str, binding: tuple[str, str]) -> None:
    with _bindings_lock:
        _bindings.pop(session_id, None)
        _bindings[session_id] = binding
        while len(_bindings) > MAX_BINDINGS:  # the oldest first
            del _bindings[next(iter(_bindings))]


def _worker_state_into(pipe: Any, worker: str, node: str) -> None:
    """Queue the reads a bound session's call is routed by: the node's lease, the worker's
    snapshot and busy count, its taint, and the node's queue lengths (see _session_route)."""
    pipe.exists(keys.node_lease(node))
    pipe.hget(keys.node_workers(node), worker)
    pipe.hget(keys.busy(node), worker)
    pipe.exists(keys.taint(worker))
    pool_state.lengths_into(pipe, keys.node_queue(node), keys.fast_node_queue(node))


def _worker_state(r: Any, worker: str, node: str) -> list[Any]:
    with r.pipeline(transaction=False) as pipe:
        _worker_state_into(pipe, worker, node)
        return list(pipe.execute())


def _session_route(
    r: Any, call: Call, session_id: str, worker: str, node: str, state: list[Any]
) -> tuple[Call, str, int]:
    """Route a call of a bound session according to its affinity mode, from its worker's
    ``state`` (:func:`_worker_state_into`): the call, its queue, and how many calls wait in
    the node's queues. ``broker/fast_send_session.lua`` decides the same way (see
    :func:`session_sent`)."""
    mode = call.affinity or "hint"
    pool = call.pool or ""
    alive, snapshot, busy_count, tainted, *lengths = state
    waiting = int(sum(lengths))
    gone = not alive or not snapshot
    info = json.loads(snapshot) if snapshot else {}
    busy = int(busy_count or 0) >= int(info.get("capacity", 1))
    if gone or tainted:
        why = "tainted" if tainted and not gone else "gone"
        if mode != "hint":
            raise _unavailable(session_id, worker, node, mode, why)
        session_store.unbind(r, session_id)  # the next worker to run it binds it
        _rebound(session_id, pool, worker, why)
        return call, keys.pool_queue(pool), waiting
    check_reentry(session_id, worker, mode, busy)  # from a host tool it waits for
    if busy and mode == "strict_fail_fast":
        raise _worker_busy(session_id, worker, node)
    if busy and mode == "hint":
        # run anywhere, keep the binding
        return call.replace(fallback=True), keys.pool_queue(pool), waiting
    return call.replace(worker=worker), keys.node_queue(node), waiting


_WHY = {"gone": "gone", "tainted": "tainted after a crash"}


def _unavailable(
    session_id: str, worker: str, node: str, mode: str, why: str
) -> SessionWorkerUnavailable:
    """The error of a strict-affinity call whose worker is ``why`` ('gone', 'tainted')."""
    return SessionWorkerUnavailable(
        f"session {session_id!r} is bound to worker {worker}, which is {_WHY[why]} "
        f"(affinity {mode}); start a new session or use affinity='hint'",
        {"session_id": session_id, "worker_id": worker, "node": node},
    )


def _worker_busy(session_id: str, worker: str, node: str) -> WorkerBusy:
    return WorkerBusy(
        f"session {session_id!r}: worker {worker} is busy (affinity strict_fail_fast)",
        {"session_id": session_id, "worker_id": worker, "node": node},
    )


def _rebound(session_id: str, pool: str, worker: str, why: str) -> None:
    """A hint-affinity session unbound from its gone or tainted worker: forgotten here,
    emitted."""
    _bindings.pop(session_id, None)
    telemetry.emit(("snakepit", "session", "rebound"), {}, {
        "session_id": session_id, "pool": pool, "worker_id": worker, "reason": _WHY[why]})


# -- a bound session's call in the fast lane's one round trip ------------------------------


@dataclass(frozen=True)
class SessionSend:
    """What ``broker/fast_send_session.lua`` needs to route a call of a bound session: the
    call (its affinity mode set), the binding this process saw last (``worker`` on
    ``node``), and the error a host-tool re-entry would raise (None: it cannot be one)."""

    call: Call
    worker: str
    node: str
    reentry: WorkerBusy | None

    @property
    def pool(self) -> str:
        return self.call.pool or ""

    @property
    def session_id(self) -> str:
        return self.call.session_id or ""

    def routed(self, route: str) -> Call:
        """The call as the route the script chose carries it (as :func:`_session_route`
        makes it)."""
        if route == "worker":
            return self.call.replace(worker=self.worker)
        if route == "fallback":
            return self.call.replace(fallback=True)
        return self.call


def session_send(settings: Settings, call: Call) -> SessionSend | None:
    """How ``broker/fast_send_session.lua`` can route ``call`` in one round trip: a call of
    a session whose binding this process has seen, that requires nothing of its host. None
    for any other call (:func:`route` routes it)."""
    session_id = call.session_id
    guess = _bindings.get(session_id) if session_id else None
    if guess is None or not session_id:
        return None
    pool = call.pool or settings.default_pool_name
    if required(settings, pool, call.requires):
        return None
    call = call.replace(affinity=affinity_for(settings, pool, call.affinity))
    worker, node = guess
    try:  # the error it would be, were the worker busy
        check_reentry(session_id, worker, call.affinity or "hint", True)
        reentry = None
    except WorkerBusy as exc:
        reentry = exc
    return SessionSend(call=call, worker=worker, node=node, reentry=reentry)


def session_sent(
    settings: Settings, r: Any, send: SessionSend, reply: list[Any],
    admission: Admission | None = None,
) -> Route | None:
    """The route ``broker/fast_send_session.lua`` took (``reply``), or raise what
    :func:`route` raises for the same state (CircuitOpen, NoWorkersAvailable,
    SessionWorkerUnavailable, WorkerBusy, QueueFull), with the same side effects (the
    ``rebound`` event). None when the session is no longer bound to the worker ``send``
    names: nothing was done, and :func:`route` routes the call (the binding found is
    remembered for it)."""
    status, waiting = connections.text(reply[0]), int(reply[1])
    route, why = connections.text(reply[3]), connections.text(reply[4])
    session_id, pool = send.session_id, send.pool
    if status == "changed":
        found = (route, why)  # the binding the script found instead
        if all(found):
            _remember(session_id, found)
        else:
            _bindings.pop(session_id, None)
        return None
    if admission is not None:
        admission.settle(reply[2])  # CircuitOpen when it refused
    if status == "gone":
        raise missing_pool_error(settings, r, pool)
    worker, node = send.worker, send.node
    if status == "unavailable":
        raise _unavailable(session_id, worker, node, send.call.affinity or "hint", why)
    if status == "reentrant" and send.reentry is not None:
        raise send.reentry
    if status == "busy":
        raise _worker_busy(session_id, worker, node)
    if route == "rebound":
        _rebound(session_id, pool, worker, why)
    queue_name = keys.node_queue(node) if route == "worker" else keys.pool_queue(pool)
    if status == "full":
        raise queue_full(settings, r, pool, queue_name, waiting)
    if status != "sent":
        raise AssertionError(f"fast_send_session.lua answered {status!r}")
    return Route(call=send.routed(route), queue=declare_queue(queue_name),
                 node=node if route == "worker" else None)


def missing_pool_error(settings: Settings, r: Any, pool: str) -> SnakepitError:
    """PoolNotFound for an unknown pool, NoWorkersAvailable when no node serves it."""
    configured = {p.name for p in settings.pools}
    known = configured | pool_state.known_pools(r)
    url = connections.shown(settings.redis_url)
    if pool not in known:
        return PoolNotFound(
            f"unknown pool {pool!r}: it is not configured here and no node has served it on "
            f"Redis {url}; known pools: {', '.join(sorted(known)) or 'none'}",
            {"pool": pool, "known": sorted(known), "redis_url": url},
        )
    requires = required(settings, pool, ())
    needs = (f" (it requires {', '.join(requires)}: a node on a host without that refuses "
             "to start)") if requires else ""
    return NoWorkersAvailable(
        f"no live node serves pool {pool!r}{needs} on Redis {url}; start one with "
        f"`snakepit-tasks worker --pool {pool}` using the same Redis (SNAKEPIT_REDIS_URL, or "
        "SNAKEPIT_CONFIG naming the same configuration file, in both environments)",
        {"pool": pool, "redis_url": url, **({"requires": list(requires)} if requires else {})},
    )


def check_pool(settings: Settings, pool: str) -> None:
    """Raise PoolNotFound / NoWorkersAvailable unless a node serves ``pool`` right now."""
    r = connections.redis_client(settings.redis_url)
    if not pool_state.pool_is_alive(r, pool):
        raise missing_pool_error(settings, r, pool)
