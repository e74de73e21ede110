"""Named jobs: the task ids of a job's latest runs, kept in Redis for late readers.

A call sent with ``job="nightly-batch"`` (``execute.apply_async(..., job=...)``, or a beat
entry's ``"options": {"job": ...}``) is recorded under that name when it is sent, so a web
page or a script started later finds the run and reads its progress with
``sp.stream_result(jobs.latest("nightly-batch"))`` or its outcome with ``AsyncResult``.
The record lives as long as a streamed run stays readable (the call's deadline plus
``stream_retention``).
"""

from __future__ import annotations

from celery import Celery

from . import connections, keys
from .app import default_app
from .call import _check_name as check_name


def runs(job: str, *, app: Celery | None = None) -> list[str]:
    """Task ids of ``job``'s remembered runs, newest first."""
    check_name("job", job)
    settings = (app or default_app()).snakepit_settings
    r = connections.redis_client(settings.redis_url)
    return [connections.text(v) for v in r.lrange(keys.job_runs(job), 0, -1)]


def latest(job: str, *, app: Celery | None = None) -> str | None:
    """The task id of ``job``'s newest run, or None when none is remembered."""
    found = runs(job, app=app)
    return found[0] if found else None
