"""Prometheus metrics of one node (the ``metrics`` extra), served on ``metrics_host:metrics_port``.

Counters and the latency histogram follow the node's telemetry events (a handler attached in
the node); gauges (queue depths, workers, busy, taints, circuit state, sessions, dead letters)
are read when Prometheus scrapes. Every series carries ``pool`` and, where it is the node's
own, ``node``. A node whose port is taken (two nodes of one host) takes the next free one, up
to :data:`PORT_TRIES` further, and publishes it in its lease (``metrics_port``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import redis

from .. import dead_letters, keys, kombu_redis, session_store
from ..connections import text
from ..errors import ConfigurationError
from . import dispatch
from .events import Event

log = logging.getLogger("snakepit_tasks.telemetry")

INSTALL_HINT = "pip install 'snakepit-tasks[metrics]'"
PORT_TRIES = 64
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}
#: Latency buckets (seconds): from a fast in-memory tool to a long model call.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
           300)

Workers = Callable[[], list[dict[str, Any]]]


class NodeMetrics:
    """The metrics of node ``node`` of ``pool``; ``workers()`` gives its workers' snapshots
    (``id``, ``state``, ``inflight``, ``capacity``, ``tainted``)."""

    def __init__(
        self, settings: Any, pool: str, node: str, r: redis.Redis, workers: Workers
    ) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            raise ConfigurationError(
                f"metrics_port is set but prometheus-client is not installed: {INSTALL_HINT}"
            ) from None
        self.settings, self.pool, self.node, self.redis = settings, pool, node, r
        self.workers = workers
        self.registry = prom.CollectorRegistry()
        self.port = 0
        self._server: Any = None
        worker_labels = ("pool", "node", "worker")

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Any:
            return prom.Counter(name, doc, labels, registry=self.registry)

        self.calls = counter("snakepit_calls", "Calls run, per worker and tool",
                             (*worker_labels, "tool"))
        self.errors = counter("snakepit_call_errors", "Calls that failed, by error class",
                              (*worker_labels, "tool", "error"))
        self.latency = prom.Histogram(
            "snakepit_call_duration_seconds", "Time a call ran on its worker, by tool",
            ("pool", "tool"), buckets=BUCKETS, registry=self.registry)
        self.queue_timeouts = counter("snakepit_queue_timeouts",
                                      "Calls that timed out in the queue (decided here)",
                                      ("pool", "node"))
        self.crashes = counter("snakepit_worker_crashes", "Worker processes that died",
                               worker_labels)
        self.taints = counter("snakepit_worker_taints", "Workers tainted after a crash",
                              worker_labels)
        self.restarts = counter("snakepit_worker_restarts",
                                "Workers started again (after a crash or a recycle)",
                                (*worker_labels, "reason"))
        self.heartbeat_misses = counter("snakepit_heartbeat_misses",
                                        "Heartbeats a worker did not answer", worker_labels)
        self.session_binds = counter("snakepit_session_binds", "Sessions bound to a worker",
                                     ("pool", "node"))
        self.chunks = counter("snakepit_stream_chunks", "Stream chunks passed on",
                              ("pool", "node", "tool"))
        self.dead_lettered = counter("snakepit_dead_lettered", "Messages refused",
                                     ("pool", "node"))
        self.registry.register(_Gauges(self))
        self._handlers: dict[Event, Callable[[Mapping[str, Any], Mapping[str, Any]], None]] = {
            ("snakepit", "call", "executed"): self._executed,
            ("snakepit", "call", "queue_timeout"): self._labelled(self.queue_timeouts, False),
            ("snakepit", "worker", "crash"): self._labelled(self.crashes, True),
            ("snakepit", "worker", "tainted"): self._labelled(self.taints, True),
            ("snakepit", "worker", "restarted"): self._restarted,
            ("snakepit", "heartbeat", "failure"): self._labelled(self.heartbeat_misses, True),
            ("snakepit", "session", "bound"): self._labelled(self.session_binds, False),
            ("snakepit", "stream", "chunk"): self._chunk,
            ("snakepit", "call", "dead_lettered"): self._labelled(self.dead_lettered, False),
        }

    # -- serving ---------------------------------------------------------------------------
    def start(self, host: str, port: int) -> int:
        """Serve /metrics on ``host`` from ``port`` (or the next free one); the port bound."""
        import prometheus_client as prom

        last: OSError | None = None
        for candidate in range(port, min(65536, port + PORT_TRIES)):
            try:
                self._server, _ = prom.start_http_server(candidate, addr=host,
                                                         registry=self.registry)
            except OSError as exc:
                last = exc
                continue
            self.port = candidate
            break
        else:
            raise ConfigurationError(
                f"cannot serve metrics on {host}:{port}..{port + PORT_TRIES - 1}: {last}",
                {"metrics_port": port},
            )
        dispatch.attach_many(self._handler_id, list(self._handlers), self._handle)
        log.info("node %s serves Prometheus metrics on http://%s:%d/metrics", self.node, host,
                 self.port)
        return self.port

    def stop(self) -> None:
        """Stop serving and counting."""
        dispatch.detach(self._handler_id)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def _handler_id(self) -> str:
        return f"snakepit.metrics.{self.node}"

    # -- events ----------------------------------------------------------------------------
    def _handle(self, event: Event, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        if md.get("node", self.node) == self.node:
            self._handlers[event](m, md)

    def _labelled(self, metric: Any, worker: bool) -> Callable[..., None]:
        def count(m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
            if worker:
                metric.labels(self.pool, self.node, md.get("worker_id") or "").inc()
            else:
                metric.labels(self.pool, self.node).inc()

        return count

    def _executed(self, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        worker, tool = md.get("worker_id") or "", md.get("tool") or ""
        self.calls.labels(self.pool, self.node, worker, tool).inc()
        if not md.get("success"):
            self.errors.labels(self.pool, self.node, worker, tool, md.get("error") or "").inc()
        self.latency.labels(self.pool, tool).observe(m.get("duration_us", 0) / 1e6)

    def _restarted(self, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        self.restarts.labels(self.pool, self.node, md.get("worker_id") or "",
                             md.get("reason") or "").inc()

    def _chunk(self, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        self.chunks.labels(self.pool, self.node, md.get("tool") or "").inc()


class _Gauges:
    """What is read at scrape time: the node's workers, and the pool's state in Redis."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.m = metrics

    def describe(self) -> list[Any]:
        return []  # nothing read at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        m = self.m
        workers = GaugeMetricFamily("snakepit_workers", "Workers of this node, by state",
                                    labels=["pool", "node", "state"])
        busy = GaugeMetricFamily("snakepit_workers_busy", "Workers with every slot taken",
                                 labels=["pool", "node"])
        inflight = GaugeMetricFamily("snakepit_calls_in_flight", "Calls running now",
                                     labels=["pool", "node"])
        tainted = GaugeMetricFamily("snakepit_workers_tainted", "Workers tainted now",
                                    labels=["pool", "node"])
        snapshot = m.workers()
        states: dict[str, int] = {}
        for w in snapshot:
            states[w["state"]] = states.get(w["state"], 0) + 1
        for state, n in sorted(states.items()):
            workers.add_metric([m.pool, m.node, state], n)
        busy.add_metric([m.pool, m.node],
                        sum(1 for w in snapshot if w["inflight"] >= w["capacity"]))
        inflight.add_metric([m.pool, m.node], sum(w["inflight"] for w in snapshot))
        tainted.add_metric([m.pool, m.node], sum(1 for w in snapshot if w.get("tainted")))
        yield from (workers, busy, inflight, tainted)
        try:
            yield from self._from_redis()
        except redis.RedisError as exc:
            log.debug("metrics: cannot read the pool's state from Redis: %s", exc)

    def _from_redis(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        m, r = self.m, self.m.redis
        depth = GaugeMetricFamily(
            "snakepit_queue_depth", "Calls waiting: in the pool queue, this node's queue, and "
            "the queues of dead nodes (before the janitor moves them)",
            labels=["pool", "node", "queue"])
        dead = [text(n) for n in r.hkeys(keys.dead_nodes(m.pool))]
        depth.add_metric([m.pool, m.node, "pool"],
                         kombu_redis.queue_length(r, keys.pool_queue(m.pool)))
        depth.add_metric([m.pool, m.node, "node"],
                         kombu_redis.queue_length(r, keys.node_queue(m.node)))
        depth.add_metric([m.pool, m.node, "dead_nodes"],
                         sum(kombu_redis.queue_length(r, keys.node_queue(n)) for n in dead))
        sessions = GaugeMetricFamily("snakepit_sessions", "Sessions in the index (all pools)",
                                     labels=["pool", "node"])
        sessions.add_metric([m.pool, m.node], session_store.count(r))
        letters = GaugeMetricFamily("snakepit_dead_letters", "Refused messages kept",
                                    labels=["pool", "node"])
        letters.add_metric([m.pool, m.node], dead_letters.count(r, m.pool))
        yield from (depth, sessions, letters)
        if m.settings.circuit_breaker_enabled:
            from ..resilience.circuit_breaker import breaker_for

            circuit = GaugeMetricFamily(
                "snakepit_circuit_state", "The pool's circuit: 0 closed, 1 half_open, 2 open",
                labels=["pool", "node"])
            state = breaker_for(m.settings, m.pool, redis=r).state
            circuit.add_metric([m.pool, m.node], CIRCUIT_STATES.get(state, -1))
            yield circuit
