"""The listener of a registering process: one thread that serves every host tool it registered.

Started on the process's first registration (one per Redis URL), it holds the process's lease
(refreshed every ``node_lease_interval_ms``, expiring after ``node_lease_ttl_ms``), BLPOPs the
process's request list, runs each host function on a small thread pool (so calls run
concurrently and a host function may call back into the pool), and pushes the outcome to the
reply list the node waits on. At exit it removes its records and its lease; a process killed
outright stops holding the lease within ``node_lease_ttl_ms`` and nodes stop offering its tools.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from .. import keys, serialization
from ..errors import SerializationError
from . import registry, wire
from .context import Serving, serving

log = logging.getLogger("snakepit_tasks.host_tools")

#: Host functions running at once in one process (more wait for a thread).
MAX_CONCURRENT_CALLS = 64
#: How long a reply waits in Redis for a node that may have given up (s).
REPLY_TTL_S = 60


class Listener:
    """Serves the host tools of this process; see the module docstring."""

    def __init__(self, r: redis.Redis, lease_ttl_ms: int, interval_ms: int) -> None:
        self.r = r
        self.registrant = registry.new_registrant_id()
        self.lease_ttl_ms = lease_ttl_ms
        self.interval = interval_ms / 1000
        self.pid = os.getpid()
        self._tools: dict[tuple[str, str], tuple[Callable[..., Any], float | None]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(MAX_CONCURRENT_CALLS, thread_name_prefix="host-tool")
        self._thread = threading.Thread(
            target=self._run, name="snakepit-host-tools", daemon=True
        )

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Take the lease (before any record names this process), then start serving."""
        registry.hold_lease(self.r, self.registrant, self.lease_ttl_ms)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving; remove this process's records and its lease."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            with contextlib.suppress(redis.RedisError):  # wake its BLPOP: exit without delay
                self.r.rpush(keys.host_requests(self.registrant), b"")
            self._thread.join(timeout)
        with self._lock:
            tools = list(self._tools)
            self._tools.clear()
        try:
            registry.remove_many(self.r, tools, self.registrant)
            registry.drop_lease(self.r, self.registrant)
        except redis.RedisError:
            log.debug("could not remove host tools at exit", exc_info=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- tools -----------------------------------------------------------------------------
    # Each tool is (function, when its record was written): a tool whose record is still being
    # written is never forgotten because a sync did not find the record yet.
    def add(self, session_id: str, name: str, fn: Callable[..., Any]) -> None:
        """Serve ``fn``; :meth:`confirm` once its record is written."""
        with self._lock:
            self._tools[(session_id, name)] = (fn, None)

    def confirm(self, session_id: str, name: str) -> None:
        """The record of a tool :meth:`add` took is now in Redis."""
        with self._lock:
            entry = self._tools.get((session_id, name))
            if entry is not None:
                self._tools[(session_id, name)] = (entry[0], time.monotonic())

    def discard(self, session_id: str, name: str) -> None:
        with self._lock:
            self._tools.pop((session_id, name), None)

    def get(self, session_id: str, name: str) -> Callable[..., Any] | None:
        with self._lock:
            entry = self._tools.get((session_id, name))
            return entry[0] if entry is not None else None

    def _sessions(self) -> set[str]:
        with self._lock:
            return {sid for sid, _ in self._tools}

    def _forget_sessions(self, gone: set[str], checked_at: float) -> None:
        """Drop the tools of sessions found gone by a sync that started at ``checked_at``."""
        with self._lock:
            for key, (_, written) in list(self._tools.items()):
                if key[0] in gone and written is not None and written < checked_at:
                    del self._tools[key]

    # -- the loop --------------------------------------------------------------------------
    def _run(self) -> None:
        requests = keys.host_requests(self.registrant)
        next_refresh = 0.0
        failures = 0
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if now >= next_refresh:
                    self._refresh()
                    next_refresh = now + self.interval
                got: Any = self.r.blpop(
                    [requests], timeout=max(0.05, min(self.interval, next_refresh - now))
                )
                failures = 0
            except (redis.RedisError, OSError, ValueError) as exc:
                # ValueError / OSError: the client's connections were closed under the
                # blocked BLPOP (the process reconfigured its clients); the next call reconnects.
                failures += 1
                if failures == 1:
                    log.warning("host tools: Redis unreachable (%s); retrying", exc)
                self._stop.wait(min(2.0, 0.1 * failures))
                continue
            if got and got[1]:  # (an empty entry only wakes the loop)
                self._pool.submit(self._serve, bytes(got[1]))

    def _refresh(self) -> None:
        registry.hold_lease(self.r, self.registrant, self.lease_ttl_ms)
        checked_at = time.monotonic()
        gone = registry.sync(self.r, self._sessions())
        if gone:
            self._forget_sessions(gone, checked_at)

    def _serve(self, body: bytes) -> None:
        try:
            req = wire.decode_request(body)
        except (ValueError, KeyError, TypeError):
            log.warning("host tools: dropped an unreadable request %r", body[:120])
            return
        if time.time() > req.deadline:
            return  # the node stopped waiting: running it now would answer nobody
        reply = self._outcome(req)
        try:
            with self.r.pipeline(transaction=False) as pipe:
                pipe.rpush(keys.host_reply(req.id), reply)
                pipe.expire(keys.host_reply(req.id), REPLY_TTL_S)
                pipe.execute()
        except redis.RedisError:
            log.warning("host tools: could not reply to %s", req.id, exc_info=True)

    def _outcome(self, req: wire.Request) -> bytes:
        fn = self.get(req.session_id, req.tool)
        if fn is None:
            return wire.error_reply(
                wire.TOOL_NOT_FOUND,
                f"host tool {req.tool!r} is no longer registered for session "
                f"{req.session_id!r} in this process",
            )
        try:
            args = serialization.decode(req.args)
        except SerializationError as exc:
            return wire.error_reply(wire.SERIALIZATION, str(exc), "SerializationError")
        if not isinstance(args, dict):
            return wire.error_reply(wire.BAD_REQUEST, "host tool arguments must be a mapping")
        try:
            with serving(Serving(req.session_id, req.tool, req.worker_id, req.capacity)):
                value = run_host_function(fn, args)
        except Exception as exc:
            return wire.error_reply(
                wire.HOST_TOOL, str(exc), type(exc).__name__,
                "".join(traceback.format_exception(exc)),
            )
        try:
            return wire.ok_reply(serialization.encode_result(value))
        except SerializationError as exc:
            return wire.error_reply(
                wire.SERIALIZATION, f"the result of host tool {req.tool!r}: {exc}",
                "SerializationError",
            )


def run_host_function(fn: Callable[..., Any], args: dict[str, Any]) -> Any:
    """``fn(**args)``; a coroutine function runs to completion on its own event loop."""
    value = fn(**args)
    if inspect.isawaitable(value):
        return asyncio.run(_awaited(value))
    return value


async def _awaited(value: Any) -> Any:
    return await value


# -- one listener per process and Redis ------------------------------------------------------
_listeners: dict[str, Listener] = {}
_listeners_lock = threading.Lock()


def listener_for(redis_url: str, r: redis.Redis, lease_ttl_ms: int, interval_ms: int) -> Listener:
    """This process's listener for ``redis_url``, started on first use."""
    with _listeners_lock:
        found = _listeners.get(redis_url)
        if found is None or found.pid != os.getpid() or not found.running:
            found = Listener(r, lease_ttl_ms, interval_ms)
            found.start()
            _listeners[redis_url] = found
        return found


def existing(redis_url: str) -> Listener | None:
    """This process's listener for ``redis_url`` if one runs."""
    with _listeners_lock:
        found = _listeners.get(redis_url)
        return found if found is not None and found.pid == os.getpid() else None


def stop_all() -> None:
    """Stop every listener of this process (runs at exit)."""
    with _listeners_lock:
        mine = [lst for lst in _listeners.values() if lst.pid == os.getpid()]
        _listeners.clear()
    for lst in mine:
        lst.stop()


def _after_fork() -> None:
    # A forked child has none of the parent's threads: it registers (and listens) afresh.
    global _listeners_lock
    _listeners.clear()
    _listeners_lock = threading.Lock()


atexit.register(stop_all)
os.register_at_fork(after_in_child=_after_fork)
