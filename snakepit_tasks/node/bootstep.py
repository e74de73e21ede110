"""The worker bootstep that turns a Celery worker into a snakepit node."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

from celery import bootsteps, signals

from .. import keys, processes
from ..errors import DeviceNotAvailable
from ..telemetry import logs
from . import console, prestart
from .intake import install as install_intake
from .node import Node
from .task_events import TaskEvents
from .worker import WorkerStartError
from .zygote import Zygote, ZygoteUnavailable

log = logging.getLogger("snakepit_tasks.node")


class SnakepitNodeStep(bootsteps.StartStopStep):
    """Starts the pool's workers before the consumer; stops them at ``worker_shutdown``.

    A bootstep's ``stop`` runs before in-flight tasks finish, so the workers are stopped from
    the ``worker_shutdown`` signal instead, after Celery has drained its thread pool.
    """

    label = "snakepit"

    def __init__(
        self,
        worker: Any,
        snakepit_pool: str | None = None,
        snakepit_workers: int | None = None,
        **kwargs: Any,
    ) -> None:
        from ..queues import declare_queue
        from .kombu_fixes import install

        app = worker.app
        settings = app.snakepit_settings
        logs.configure(settings.log_level, settings.log_categories, handler=True)
        if settings.broker.startswith(("redis://", "rediss://", "unix://")):
            install(settings.broker)
        console.install()  # before Celery's banner shows the broker URL
        self.pool = prestart.node_pool(settings, snakepit_pool)
        self.node: Node | None = None
        self._started_ms: str = ""  # process start → this step's start (the debug log)
        self.count = int(snakepit_workers or self.pool.pool_size)
        # Two threads per worker slot: one runs, one may wait for a pinned (session) worker
        # without leaving another idle worker of this node unfed.
        worker.concurrency = 2 * self.count * self.pool.capacity
        worker.min_concurrency = worker.concurrency  # the Pool step copied the old value
        watch_parent()
        # The workers' zygote imports the runtime while Celery boots (see node.zygote): the
        # one the entry started (node.prestart), else one started now.
        self.zygote: Zygote | None = None
        early, app.snakepit_zygote = getattr(app, "snakepit_zygote", None), None
        if settings.worker_start_method == "fork":
            env = prestart.pool_env(settings, self.pool)
            self.zygote = prestart.adopt(early, self.pool, env, worker.hostname)
            if self.zygote is None:
                self.zygote = Zygote(env, name=worker.hostname, instance=settings.instance_name)
                try:
                    self.zygote.start()
                except ZygoteUnavailable as exc:
                    log.warning("%s; workers start in fresh interpreters", exc)
                    self.zygote = None
        if settings.task_events:
            # Flower watches: send task events, and worker heartbeats (even when started with
            # --without-heartbeat), else Flower lists the node as offline.
            worker.task_events = True
            worker.options["without_heartbeat"] = False
        queues = app.amqp.queues
        names = [keys.pool_queue(self.pool.name), keys.node_queue(worker.hostname)]
        for queue_name in names:
            queues.add(declare_queue(queue_name))
        queues.select(names)

        def shutting_down(**kw: Any) -> None:
            if self.node is not None:
                self.node.begin_shutdown()

        def shutdown(sender: Any = None, **kw: Any) -> None:
            if self.node is not None:
                self.node.stop()
                self.node = None

        def ready(sender: Any = None, **kw: Any) -> None:
            # Advertise the node only once Celery consumes its queues: callers that saw
            # await_ready() never wait on a node that is still starting.
            if self.node is not None:
                self.node.publish(app)
                log.debug("node %s: published %s ms after its process started (node step at "
                          "%s ms)", self.node.name, process_age_ms(), self._started_ms)

        signals.worker_ready.connect(ready, weak=False)
        signals.worker_shutting_down.connect(shutting_down, weak=False)
        signals.worker_shutdown.connect(shutdown, weak=False)
        self._handlers = (ready, shutting_down, shutdown)

    def start(self, worker: Any) -> None:
        self._started_ms = process_age_ms()
        if getattr(worker, "quiet", False):
            console.quiet_shutdown(worker)
        settings = worker.app.snakepit_settings
        try:
            node = Node(settings, self.pool, worker.hostname, count=self.count,
                        zygote=self.zygote)
            node.start()
        except (WorkerStartError, DeviceNotAvailable) as exc:
            if isinstance(exc, WorkerStartError) and not exc.details.get("adapter_load"):
                raise
            # It fails the same way every time: say it once and exit with a code the
            # supervisor does not retry (its workers are already stopped).
            log.critical("node %s cannot start pool %r: %s", worker.hostname, self.pool.name,
                         exc)
            sys.stderr.flush()
            os._exit(processes.EXIT_ADAPTER_UNLOADABLE)
        node.app = worker.app
        # Fast-lane calls get the task events Celery sends for its own (Flower shows them).
        node.fast_lane.events = TaskEvents(lambda: getattr(worker.consumer, "event_dispatcher",
                                                           None))
        install_intake(node.dead_letter, node.feed)
        node.settle_previous_run(worker.app)
        self.node = node
        worker.app.snakepit_node = node

    def stop(self, worker: Any) -> None:
        """Nothing here: calls in flight still need their workers."""

    def shutdown(self, worker: Any) -> None:
        if self.node is not None:
            self.node.stop()
            self.node = None


def watch_parent() -> None:
    """When started by ``snakepit-tasks worker``, stop (gracefully) if that supervisor dies."""
    parent = int(os.environ.get("SNAKEPIT_PARENT_PID", "0") or 0)
    if not parent or os.getppid() != parent:
        return
    processes.set_parent_death_signal(signal.SIGTERM)
    processes.watch_parent(parent, lambda: os.kill(os.getpid(), signal.SIGTERM))


def process_age_ms() -> str:
    """How long ago this process started, in ms (``/proc``, 10 ms steps; "?" elsewhere)."""
    ticks = processes.process_start_time(os.getpid())
    try:
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError):
        return "?"
    if ticks is None:
        return "?"
    return f"{(uptime - ticks / os.sysconf('SC_CLK_TCK')) * 1000:.0f}"
