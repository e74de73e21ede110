"""Every Redis key and queue name snakepit-tasks uses is built here and nowhere else."""

from __future__ import annotations

PREFIX = "snakepit"
EXCHANGE = "snakepit"


def pool_queue(pool: str) -> str:
    """The queue every node of ``pool`` consumes."""
    return f"snakepit.pool.{pool}"


def node_queue(node: str) -> str:
    """The queue only node ``node`` consumes (calls pinned to one of its workers)."""
    return f"snakepit.node.{node}"


def pools() -> str:
    """Set of pool names ever served by a node."""
    return f"{PREFIX}:pools"


def pool_nodes(pool: str) -> str:
    """Set of node names that have served ``pool`` (live or not; see :func:`node_lease`)."""
    return f"{PREFIX}:pool:{pool}:nodes"


def node_lease(node: str) -> str:
    """Hash describing a live node; expires unless the node refreshes it."""
    return f"{PREFIX}:node:{node}"


def node_workers(node: str) -> str:
    """Hash ``worker_id -> JSON`` of a node's workers; expires with the lease."""
    return f"{PREFIX}:node:{node}:workers"


def pool_stats(pool: str) -> str:
    """Hash of counters for ``pool``: requests, errors, queue_timeouts, pool_saturated."""
    return f"{PREFIX}:stats:{pool}"


def busy(node: str) -> str:
    """Hash ``worker_id -> calls in flight`` for a node's workers."""
    return f"{PREFIX}:node:{node}:busy"


def pool_alive(pool: str) -> str:
    """Present while at least one node of ``pool`` holds a lease (same TTL)."""
    return f"{PREFIX}:pool:{pool}:alive"


def stream(call_id: str) -> str:
    """Redis stream holding the chunks of a streaming call, then its final entry."""
    return f"{PREFIX}:stream:{call_id}"


def stream_cancel(call_id: str) -> str:
    """Set by a caller to stop a streaming call."""
    return f"{PREFIX}:stream:{call_id}:cancel"


def reader_wake(reader_id: str) -> str:
    """Stream a caller process writes to wake its own blocked stream reader."""
    return f"{PREFIX}:reader:{reader_id}:wake"


def chunk_id(seq: int) -> str:
    """Stream entry id of chunk ``seq`` (so a reader can resume after any chunk)."""
    return f"0-{seq}"


def call_state(call_id: str) -> str:
    """``started`` once a node runs the call, ``timed_out`` once a caller gave up on it."""
    return f"{PREFIX}:call:{call_id}"


def session(session_id: str) -> str:
    """Hash of a session: worker, node, pool, created, last_used; expires when unused."""
    return f"{PREFIX}:session:{session_id}"


def sessions() -> str:
    """Sorted set of session ids by last use (quota and listing)."""
    return f"{PREFIX}:sessions"


def taint(worker_id: str) -> str:
    """Present while ``worker_id`` is tainted (recently crashed): routing avoids it."""
    return f"{PREFIX}:taint:{worker_id}"


def reply(call_id: str) -> str:
    """List the node pushes a synchronous call's outcome to (the caller BLPOPs it)."""
    return f"{PREFIX}:reply:{call_id}"


def janitor_lock(pool: str) -> str:
    """Held by the one live node that cleans up after ``pool``'s dead nodes."""
    return f"{PREFIX}:janitor:{pool}:lock"


def dead_nodes(pool: str) -> str:
    """Hash ``node -> first seen dead`` for nodes whose queues the janitor still watches."""
    return f"{PREFIX}:pool:{pool}:dead"


def dead_backlog(pool: str) -> str:
    """Hash ``node -> messages found in its queue`` at the janitor's last sweep."""
    return f"{PREFIX}:pool:{pool}:dead_backlog"


def intake_feeding(node: str, queue: str) -> str:
    """The Celery-lane message one of ``node``'s feeders took from ``queue`` (being checked)."""
    return f"{PREFIX}:intake:{node}:feeding:{queue}"


def intake_staging(node: str) -> str:
    """Celery-lane messages ``node``'s feeders took from its queues for its consumer."""
    return f"{PREFIX}:intake:{node}:staging"


def intake_pulled(node: str) -> str:
    """The Celery-lane message ``node``'s consumer took, until kombu records it unacked."""
    return f"{PREFIX}:intake:{node}:pulled"


# kombu's Redis transport keeps delivered-but-unacknowledged messages here.
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"


def circuit(name: str, tool: str | None = None) -> str:
    """Hash holding circuit breaker ``name``'s state (per pool, or per pool and ``tool``)."""
    return f"{PREFIX}:circuit:{name}" if tool is None else f"{PREFIX}:circuit:{name}:{tool}"


def circuit_trials(name: str, tool: str | None = None) -> str:
    """Sorted set of the half-open trial calls a circuit breaker let through (by expiry)."""
    suffix = name if tool is None else f"{name}:{tool}"
    return f"{PREFIX}:circuit_trials:{suffix}"


def health(pool: str) -> str:
    """Sorted set of ``pool``'s recent worker crashes, scored by time (ms): the health window."""
    return f"{PREFIX}:health:{pool}"


def stream_ack(call_id: str) -> str:
    """The last chunk a reader of the call's stream has consumed (backpressure)."""
    return f"{PREFIX}:stream:{call_id}:ack"


def dead_letters(pool: str) -> str:
    """List of messages ``pool``'s nodes could not decode or accept (newest first)."""
    return f"{PREFIX}:pool:{pool}:dead_letters"


def fast_pool_queue(pool: str) -> str:
    """Fast-lane list of calls any node of ``pool`` may take (callers LPUSH, nodes BLMOVE)."""
    return f"{PREFIX}:fast:pool:{pool}"


def fast_node_queue(node: str) -> str:
    """Fast-lane list of calls pinned to one of ``node``'s workers."""
    return f"{PREFIX}:fast:node:{node}"


def fast_processing(node: str) -> str:
    """Fast-lane calls ``node`` has taken and not finished (the janitor's to recover)."""
    return f"{PREFIX}:fast:node:{node}:processing"


#: A node's fast-lane crews: the pool list's and the node list's (see node.fast_lane).
FAST_CREWS = ("pool", "node")


def fast_landing(node: str, crew: str) -> str:
    """Where one of ``node``'s fast-lane crews (``pool`` or ``node``) moves the message it
    takes, for the moment until ``fast_take.lua`` moves it on to the processing list (in the
    same round trip)."""
    return f"{PREFIX}:fast:node:{node}:landing:{crew}"


def fast_clock(node: str, crew: str) -> str:
    """Redis's clock when that crew's leader began to wait (``fast_clock.lua``)."""
    return f"{PREFIX}:fast:node:{node}:landing:{crew}:clock"


def job_runs(job: str) -> str:
    """List of the task ids of job ``job``'s latest runs (newest first, capped; TTL)."""
    return f"{PREFIX}:job:{job}:runs"


def beat_prefix() -> str:
    """Prefix of celery-redbeat's keys: the schedule, its entries and the one-beat lock."""
    return f"{PREFIX}:beat:"


def host_tools(session_id: str) -> str:
    """Hash ``name -> JSON record`` of the host tools registered for a session; expires with
    the session (see :mod:`snakepit_tasks.host_tools.registry`)."""
    return f"{PREFIX}:host_tools:{session_id}"


def host_registrant(registrant: str) -> str:
    """Lease of a process that registered host tools; its listener refreshes it."""
    return f"{PREFIX}:host_registrant:{registrant}"


def host_requests(registrant: str) -> str:
    """List of host-tool requests for one registering process (its listener BLPOPs it)."""
    return f"{PREFIX}:host_registrant:{registrant}:requests"


def host_reply(request_id: str) -> str:
    """List a registrant pushes a host-tool call's outcome to (the node BLPOPs it)."""
    return f"{PREFIX}:host_reply:{request_id}"
