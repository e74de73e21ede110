"""The exactly-once claim: a node takes a worker slot for a call and claims the call in Redis.

Read with ``broker/start_call.lua`` and ``broker/give_up_call.lua``. A call either starts on
one worker (``started:<node>``, then ``done:<node>`` once its outcome is sent) or times out
in the queue (``timed_out``), never both: the caller and the node race through those two
scripts. While a node holds a call waiting for a slot it marks it ``taken:<node>``, so a
janitor can re-route it if the node dies.

On the fast lane most calls are claimed in the round trip that takes them
(``broker/fast_take.lua`` behind the ``BLMOVE``, for the first ready worker the call may
run on): the consumer then holds that worker's slot (:class:`Held`) and :meth:`Claims.take` only
checks the call is not late; a claim it cannot use goes back (``broker/release_claim.lua``)
and the call is claimed as any other.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from .. import keys, lua
from ..call import CLEANUP_COMMAND, Call
from ..config import PoolConfig, Settings
from ..connections import text
from ..errors import (
    QueueTimeout,
    SessionQuotaExceeded,
    SessionWorkerUnavailable,
    WorkerBusy,
    WorkerCrashed,
)
from .worker import AdapterWorker
from .workerset import NodeDraining, WorkerSet

log = logging.getLogger("snakepit_tasks.node")

#: How long a call's state outlives its deadline (ms), so late copies still see it.
CALL_STATE_MARGIN_MS = 60_000
#: Longer fast-lane messages are not looked into by fast_take.lua (the node claims them).
FAST_TAKE_MAX_BYTES = 16 * 1024


class DuplicateCopy(Exception):  # noqa: N818 - control flow, never reaches a caller
    """A copy of a call that another live node started, or that a node finished: dropped,
    the call has (or will have) its outcome from that node."""

    def __init__(self, call_id: str, holder: str) -> None:
        super().__init__(call_id, holder)
        self.call_id = call_id
        self.holder = holder


class Redirect(Exception):  # noqa: N818 - control flow, never reaches a caller
    """The call's session lives on another node's worker: send the call there."""

    def __init__(self, worker_id: str, node: str) -> None:
        super().__init__(worker_id, node)
        self.worker_id = worker_id
        self.node = node


@dataclass
class Held:
    """A call claimed when it was taken (fast_take.lua) and the slot held for it, until
    :meth:`Claims.take` uses it or :meth:`Claims.hand_back` returns it (``settled``)."""

    call_id: str
    slot: AdapterWorker
    settled: bool = False


@dataclass(frozen=True)
class Claimed:
    """A slot taken for a call; ``new_session`` when the call bound its session just now."""

    slot: AdapterWorker
    new_session: bool


class Claims:
    """Takes slots on one node's workers and claims calls for them, exactly once."""

    def __init__(
        self, r: redis.Redis, settings: Settings, pool: PoolConfig, node: str, workers: WorkerSet
    ) -> None:
        self.r = r
        self.settings = settings
        self.pool = pool
        self.node = node
        self.workers = workers
        self._give_up_call = lua.script(r, "give_up_call")
        self._mark_taken = lua.script(r, "mark_taken")
        self._release_claim = lua.script(r, "release_claim")

    def take(
        self, call: Call, call_id: str, *, rerun_ok: bool, held: Held | None = None
    ) -> Claimed:
        """A slot for ``call``, honouring its session, affinity and queue timeout (``held``:
        the call was claimed when it was taken, for that slot).

        Raises QueueTimeout (never runs), WorkerBusy, SessionWorkerUnavailable,
        SessionQuotaExceeded, WorkerCrashed (a copy of a call that started before), or
        :class:`Redirect` when the session lives on another node.
        """
        deadline = float(call.deadline or time.time())
        queue_deadline = deadline
        if call.enqueued_at is not None:
            waited_until = call.enqueued_at + self.settings.pool_queue_timeout / 1000
            queue_deadline = min(deadline, waited_until)
        if held is not None and not held.settled:
            if time.time() <= queue_deadline and held.call_id == call_id and (
                    call.worker in (None, held.slot.worker_id)):
                held.settled = True
                return Claimed(held.slot, False)
            self.hand_back(held)  # late after all: claimed as usual, so it times out
        if time.time() > queue_deadline:
            self.give_up(call_id)  # picked up too late: it never runs
            raise self._queue_timeout()
        session_id = call.session_id or ""
        ids = {w.worker_id for w in self.workers.workers}
        wanted = call.worker
        while True:
            if wanted is not None and wanted not in ids:
                raise SessionWorkerUnavailable(
                    f"worker {wanted} is not on node {self.node} any more",
                    {"worker_id": wanted, "session_id": session_id},
                )
            slot = self._acquire(call, call_id, wanted, queue_deadline)
            start = functools.partial(self._start, call_id, slot, session_id, deadline=deadline,
                                      rerun_ok=rerun_ok)
            status, bound, bound_node, new, holder = start(bind=not call.fallback)
            if status == "moved" and bound_node == self.node and bound in ids and (
                    self._falls_back(call, bound)):
                # Bound here since it was sent, to a busy worker: affinity hint runs it on
                # this free one and keeps the binding (as routing does for a busy worker).
                status, bound, bound_node, new, holder = start(bind=False)
            if status == "ok":
                return Claimed(slot, new and bool(session_id))
            self.workers.release(slot)
            if status == "done":  # it ran to its end: its outcome is out already
                raise DuplicateCopy(call_id, holder)
            if status == "moved":
                if bound_node == self.node and bound in ids:
                    wanted = bound
                    continue
                raise Redirect(bound, bound_node)
            if status == "duplicate" and self.r.exists(keys.node_lease(holder)):
                raise DuplicateCopy(call_id, holder)
            raise self._refusal(status, call_id, session_id)

    def _start(
        self, call_id: str, slot: AdapterWorker, session_id: str, *, bind: bool,
        deadline: float, rerun_ok: bool,
    ) -> tuple[str, str, str, bool, str]:
        """start_call.lua for ``slot``; a copy that a dead node started is taken over when
        ``rerun_ok`` (an idempotent tool may run again here)."""
        status, bound, bound_node, new, holder = self._claim(
            call_id, slot, session_id, bind=bind, deadline=deadline, rerun_ok=rerun_ok
        )
        if status == "duplicate" and rerun_ok and not self.r.exists(keys.node_lease(holder)):
            status, bound, bound_node, new, holder = self._claim(
                call_id, slot, session_id, bind=bind, deadline=deadline, rerun_ok=rerun_ok,
                takeover=holder,
            )
        return status, bound, bound_node, new, holder

    def _falls_back(self, call: Call, bound: str) -> bool:
        """Whether a hint-affinity call of a session bound to ``bound`` (a worker of this
        node) runs elsewhere: that worker has no free slot now."""
        if (call.affinity or "hint") != "hint":
            return False
        return not any(w.worker_id == bound and w.has_free_slot for w in self.workers.workers)

    def _acquire(
        self, call: Call, call_id: str, wanted: str | None, queue_deadline: float
    ) -> AdapterWorker:
        fail_fast = wanted is not None and call.affinity == "strict_fail_fast"
        try:
            try:
                return self.workers.acquire(time.time(), wanted)
            except QueueTimeout:
                if fail_fast:
                    raise
                # It will wait here: say so, so a janitor can re-route it if we die.
                self.mark_taken(call_id, float(call.deadline or queue_deadline))
                return self.workers.acquire(queue_deadline, wanted)
        except QueueTimeout:
            if fail_fast:
                raise WorkerBusy(
                    f"worker {wanted} is busy (affinity strict_fail_fast)",
                    {"worker_id": wanted, "session_id": call.session_id or ""},
                ) from None
            self.give_up(call_id)
            raise

    def _refusal(self, status: str, call_id: str, session_id: str) -> Exception:
        if status == "timed_out":
            return self._queue_timeout()
        if status == "duplicate":
            return WorkerCrashed(
                "this call was started before by a node that died; it is not run again "
                "because the tool is not idempotent (declare @tool(idempotent=True) to "
                "allow re-runs)",
                {"call_id": call_id},
            )
        return SessionQuotaExceeded(
            f"session {session_id!r} cannot start: session_max_sessions "
            f"({self.settings.session_max_sessions}) sessions exist; end some with "
            "snakepit_tasks.sessions.delete() or raise the limit",
            {"session_id": session_id},
        )

    def _queue_timeout(self) -> QueueTimeout:
        return QueueTimeout(
            "the call waited longer than pool_queue_timeout and was not run",
            {"pool": self.pool.name},
        )

    def _claim(
        self,
        call_id: str,
        slot: AdapterWorker,
        session_id: str,
        *,
        bind: bool,
        deadline: float,
        rerun_ok: bool,
        takeover: str = "",
    ) -> tuple[str, str, str, bool, str]:
        reply: Any = lua.run(
            self.r, "start_call",
            [keys.call_state(call_id), keys.session(session_id), keys.sessions(),
             keys.busy(self.node)],
            [
                slot.worker_id,
                self.node,
                self.pool.name,
                repr(time.time()),
                self.settings.session_default_ttl,
                self.settings.session_max_sessions,
                session_id,
                "1" if bind else "0",
                _state_ttl_ms(deadline),
                "1" if rerun_ok else "0",
                takeover,
            ],
        )
        status, bound, bound_node, new, holder = (text(x) for x in reply)
        return status, bound, bound_node, new == "1", holder

    def fast_take_args(
        self, landing: str, clock: str, processing: str, mark: str
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of ``broker/fast_take.lua`` for a take into ``landing`` now, whose
        ``clock`` fast_clock.lua stamps with ``mark`` (digits)."""
        script_keys = [landing, processing, keys.sessions(), keys.busy(self.node), clock]
        args: list[Any] = [
            self.node, self.pool.name, repr(time.time()), self.settings.session_default_ttl,
            self.settings.session_max_sessions, CALL_STATE_MARGIN_MS, keys.call_state(""),
            keys.session(""), FAST_TAKE_MAX_BYTES, CLEANUP_COMMAND, mark, *self.candidates(),
        ]
        return script_keys, args

    def candidates(self) -> list[str]:
        """Ids of the ready workers in the order a slot is given out (free, untainted, least
        loaded, least used first). Read without the slots' lock and before a wait: a hint
        for fast_take.lua (a busy worker may be free by the time a call comes); :meth:`hold`
        decides."""
        ready = [w for w in self.workers.workers if w.state == "ready"]
        ready.sort(key=lambda w: (w.inflight >= w.capacity, self.workers.is_tainted(w.worker_id),
                                  w.inflight, w.requests))
        return [w.worker_id for w in ready]

    def hold(self, call_id: str, worker_id: str) -> Held | None:
        """The slot of ``worker_id`` for a call fast_take.lua claimed for it, or None (and the
        claim handed back) when that slot is not free now."""
        try:
            slot = self.workers.acquire(0.0, worker_id)
        except (QueueTimeout, NodeDraining):
            self._unclaim(call_id, worker_id)
            return None
        return Held(call_id, slot)

    def hand_back(self, held: Held) -> None:
        """Return a claim made when the call was taken, and its slot (the call never ran)."""
        if held.settled:
            return
        held.settled = True
        self.workers.release(held.slot)
        self._unclaim(held.call_id, held.slot.worker_id)

    def _unclaim(self, call_id: str, worker_id: str) -> None:
        self._release_claim(keys=[keys.call_state(call_id), keys.busy(self.node)],
                            args=[self.node, worker_id])

    def mark_taken(self, call_id: str, deadline: float) -> None:
        """Record that this node holds the call, waiting for a slot (not started)."""
        try:
            self._mark_taken(keys=[keys.call_state(call_id)],
                             args=[self.node, _state_ttl_ms(deadline)])
        except Exception:
            log.debug("could not mark call %s taken", call_id, exc_info=True)

    def give_up(self, call_id: str) -> None:
        """Mark the call timed out in the queue unless it started (then it never runs)."""
        self._give_up_call(
            keys=[keys.call_state(call_id), keys.pool_stats(self.pool.name)],
            args=[CALL_STATE_MARGIN_MS],
        )


def _state_ttl_ms(deadline: float) -> int:
    return int(max(0.0, deadline - time.time()) * 1000) + CALL_STATE_MARGIN_MS
