"""snakepit_tasks.app: the Celery app's safe-delivery wiring (no broker is contacted)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from snakepit_tasks import keys
from snakepit_tasks.app import EXCHANGE, create_app, declare_queue
from snakepit_tasks.config import load_settings

EXECUTE = "snakepit.execute"


@pytest.fixture
def app() -> Iterator[Celery]:
    settings = load_settings(
        redis_url="redis://127.0.0.1:1/0",
        pools=[{"name": "a"}, {"name": "b"}],
        visibility_timeout=1234,
    )
    the_app = create_app(settings, main="unit-test")
    yield the_app
    the_app.close()


def test_declare_queue_has_explicit_exchange_and_routing_key() -> None:
    q = declare_queue("snakepit.pool.x")
    assert q.name == "snakepit.pool.x"
    assert q.routing_key == "snakepit.pool.x"
    assert q.exchange is EXCHANGE
    assert q.exchange.name == keys.EXCHANGE
    assert q.exchange.type == "direct"
    assert q.exchange.durable


def test_queues_for_every_pool(app: Celery) -> None:
    queues = {q.name: q for q in app.conf.task_queues}
    assert set(queues) == {"snakepit.pool.a", "snakepit.pool.b"}
    assert all(q.exchange.name == "snakepit" for q in queues.values())
    assert all(q.routing_key == name for name, q in queues.items())
    assert app.conf.task_default_queue == "snakepit.pool.a"
    assert app.conf.task_default_routing_key == "snakepit.pool.a"
    assert app.conf.task_default_exchange == "snakepit"


def test_safe_delivery_settings(app: Celery) -> None:
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_disable_prefetch is True
    assert conf.broker_transport_options["visibility_timeout"] == 1234
    assert conf.worker_pool == "threads"
    assert conf.task_serializer == "json" and conf.result_serializer == "json"
    assert conf.accept_content == ["json"]
    assert app.conf.broker_url == "redis://127.0.0.1:1/0"


def test_prefetch_switch_only_for_redis_broker() -> None:
    settings = load_settings(broker_url="amqp://guest@127.0.0.1:1//")
    the_app = create_app(settings, main="unit-amqp")
    try:
        assert the_app.conf.worker_disable_prefetch is False
        assert the_app.conf.worker_prefetch_multiplier == 1
    finally:
        the_app.close()


def test_execute_task_registered(app: Celery) -> None:
    assert EXECUTE in app.tasks
    assert app.tasks[EXECUTE].acks_late is True
    assert app.snakepit_settings.pool("b").name == "b"


def test_router_sends_execute_to_its_pool(app: Celery) -> None:
    route = app.amqp.router.route
    options = route({}, EXECUTE, args=("ping",), kwargs={"pool": "b"})
    assert options["queue"].name == "snakepit.pool.b"
    assert options["queue"].routing_key == "snakepit.pool.b"
    default = route({}, EXECUTE, args=("ping",), kwargs={})
    assert default["queue"].name == "snakepit.pool.a"


def test_worker_options(app: Celery) -> None:
    flags = {opt for o in app.user_options["worker"] for opt in o.opts}
    assert {"--snakepit-pool", "--snakepit-workers"} <= flags
