"""The Celery app: built from settings by :func:`create_app`; a lazy default on top."""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery
from click import Option

from . import beat, keys
from .config import Settings, load_settings
from .execute_task import EXECUTE, ExecuteTask
from .queues import EXCHANGE, declare_queue

__all__ = ["EXCHANGE", "configure", "create_app", "declare_queue", "default_app"]

#: Named, not imported: only a Celery worker resolves it, so callers never load node code.
NODE_STEP = "snakepit_tasks.node.bootstep:SnakepitNodeStep"


def create_app(settings: Settings | None = None, *, main: str = "snakepit_tasks") -> Celery:
    """A Celery app wired for snakepit: safe delivery defaults, the execute task, the node step."""
    settings = settings or load_settings()
    app = Celery(main, broker=settings.broker, backend=settings.backend, set_as_current=True)
    is_redis_broker = settings.broker.startswith(("redis://", "rediss://", "unix://"))
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # A tool never runs twice silently: ack after the run, one message per free slot.
        task_acks_late=True,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=is_redis_broker,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        task_default_exchange=keys.EXCHANGE,
        task_default_exchange_type="direct",
        task_default_queue=keys.pool_queue(settings.default_pool_name),
        task_default_routing_key=keys.pool_queue(settings.default_pool_name),
        task_queues=[declare_queue(keys.pool_queue(p.name)) for p in settings.pools],
        task_routes=(_router(settings),),
        worker_pool="threads",
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        result_expires=3600,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    app.on_after_configure.connect(beat.defaults_for(settings), weak=False)
    app.snakepit_settings = settings
    app.user_options["worker"].add(
        Option(
            ["--snakepit-pool"],
            default=None,
            help="snakepit pool this node serves (default: SNAKEPIT_NODE_POOL or the first)",
        )
    )
    app.user_options["worker"].add(
        Option(
            ["--snakepit-workers"],
            default=None,
            type=int,
            help="workers this node hosts (default: the pool's pool_size)",
        )
    )
    app.steps["worker"].add(NODE_STEP)
    app.register_task(ExecuteTask())
    return app


def _router(settings: Settings) -> Any:
    def route(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
        # For send_task("snakepit.execute", ...) callers that never import the task class.
        if name != EXECUTE:
            return None
        pool = (kwargs or {}).get("pool") or settings.default_pool_name
        return {"queue": declare_queue(keys.pool_queue(pool))}

    return route


_default: Celery | None = None
_default_lock = threading.Lock()


def default_app() -> Celery:
    """The process-wide app, built from :func:`load_settings` on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = create_app(load_settings())
        return _default


def configure(settings: Settings | None = None, **overrides: Any) -> Celery:
    """Replace the process-wide app with one built from ``settings`` and/or ``overrides``."""
    global _default
    if settings is None:
        settings = load_settings(**overrides)
    elif overrides:
        settings = settings.replace(**overrides)
    app = create_app(settings)
    with _default_lock:
        old, _default = _default, app
    if old is not None:
        old.close()
    return app


def set_default_app(app: Celery) -> None:
    """Make ``app`` the process-wide app (node entry points do this)."""
    global _default
    with _default_lock:
        _default = app


def reset_default_app() -> None:
    """Forget the process-wide app, closing its connections."""
    global _default
    with _default_lock:
        old, _default = _default, None
    if old is not None:
        old.close()
