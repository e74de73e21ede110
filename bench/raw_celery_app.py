"""A plain Celery app with one ``ping`` task: the baseline snakepit is compared against.

Same safety settings as snakepit's app (JSON, late ack, prefetch 1, threads pool) so the
difference measured is snakepit's own work: routing, the node, the gRPC hop to a runtime.
The worker is ``celery -A bench.raw_celery_app worker -P threads -c 2``; its broker URL and
queue come from ``BENCH_RAW_REDIS_URL`` and ``BENCH_RAW_QUEUE``.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

PING = "bench.raw.ping"
DEFAULT_QUEUE = "bench.raw"


def plain_app(name: str, redis_url: str, queue: str, **conf: Any) -> Celery:
    """A Celery app on ``redis_url`` whose tasks go to ``queue`` (broker and backend alike),
    with snakepit's delivery settings (JSON messages, late ack, prefetch 1, threads pool);
    ``conf`` overrides them."""
    app = Celery(name, broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=True,
        broker_transport_options={"visibility_timeout": 3600},
        broker_connection_retry_on_startup=True,
        task_default_exchange=queue,
        task_default_exchange_type="direct",
        task_default_queue=queue,
        task_default_routing_key=queue,
        # Bound to its own exchange, like snakepit's queues (never a bare Queue(name)).
        task_queues=[Queue(queue, Exchange(queue, type="direct", durable=True), routing_key=queue)],
        worker_pool="threads",
        worker_concurrency=2,
        worker_send_task_events=False,
        task_send_sent_event=False,
        result_expires=3600,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    app.conf.update(conf)
    return app


def create_app(redis_url: str, queue: str = DEFAULT_QUEUE) -> Celery:
    """The raw Celery app of the bench: one ``ping`` task."""
    app = plain_app("bench_raw", redis_url, queue)

    @app.task(name=PING, acks_late=True, shared=False)
    def ping() -> dict[str, Any]:
        return {"status": "pong", "pid": os.getpid()}

    return app


# The worker's app (``-A bench.raw_celery_app``); Celery connects lazily, so importing is free.
app = create_app(
    os.environ.get("BENCH_RAW_REDIS_URL", "redis://127.0.0.1:6379/0"),
    os.environ.get("BENCH_RAW_QUEUE", DEFAULT_QUEUE),
)
