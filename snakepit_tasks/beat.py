"""Celery beat for a snakepit deployment: scheduled calls, one active beat at a time.

A schedule is a Celery configuration module with a ``beat_schedule`` whose entries send the
task ``snakepit.execute`` with a call's keyword arguments (``command``, ``args``, ``pool``,
``timeout``, ``stream`` ...); ``"options": {"job": NAME}`` records each run for late readers
(:mod:`snakepit_tasks.jobs`).

One beat runs the schedule however many are started: the scheduler is celery-redbeat's
(extra ``[beat]``), which keeps the schedule, the last run of each entry and a lock in Redis.
The beat holding the lock sends the due calls and extends the lock every tick; the others
wait for the lock, and one takes over when the active beat's lock expires (``LOCK_TIMEOUT``
seconds after it died). Because the last runs live in Redis too, the beat that takes over
neither repeats a run the dead one sent nor skips one that was due. A lock of our own in
front of Celery's file-held schedule could not promise that.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import keys
from .config import Settings
from .errors import ConfigurationError
from .monitor import APP, celery_argv

#: The scheduler class (celery-redbeat).
SCHEDULER = "redbeat.RedBeatScheduler"
#: Longest sleep between two ticks of beat (seconds); the standby retries the lock as often.
MAX_LOOP_INTERVAL = 5
#: Seconds after the active beat's last tick before another beat may take over.
LOCK_TIMEOUT = 30


def conf_defaults(settings: Settings) -> dict[str, Any]:
    """Celery settings beat reads, as defaults a schedule module may override."""
    return {
        "redbeat_redis_url": settings.redis_url,
        "redbeat_key_prefix": keys.beat_prefix(),
        "redbeat_lock_timeout": LOCK_TIMEOUT,
        "beat_max_loop_interval": MAX_LOOP_INTERVAL,
    }


def defaults_for(settings: Settings) -> Callable[..., None]:
    """An ``app.on_after_configure`` receiver that fills in :func:`conf_defaults` where the
    configuration module (``celery --config``, a beat schedule) does not set them."""

    def fill(sender: Any = None, source: Any = None, **kwargs: Any) -> None:
        given = sender.loader.conf if sender is not None else None
        for name, value in conf_defaults(settings).items():
            if given is None or name not in given:
                source[name] = value

    return fill


def schedule_module(schedule: str) -> tuple[str, str | None]:
    """(module name, directory to put on PYTHONPATH) for a schedule given as a module name
    or as a ``.py`` file."""
    if schedule.endswith(".py") or "/" in schedule:
        path = Path(schedule)
        if not path.is_file():
            raise ConfigurationError(f"beat schedule {schedule!r} does not exist",
                                     {"schedule": schedule})
        return path.stem, str(path.resolve().parent)
    if not schedule.replace(".", "").replace("_", "").isalnum():
        raise ConfigurationError(f"beat schedule {schedule!r} is neither a module name nor a "
                                 ".py file", {"schedule": schedule})
    return schedule, None


def beat_argv(schedule: str | None, args: list[str]) -> tuple[list[str], str | None]:
    """The ``celery beat`` command for ``snakepit-tasks beat``, and the directory the
    schedule module needs on PYTHONPATH (None when none)."""
    if importlib.util.find_spec("redbeat") is None:
        raise ConfigurationError(
            "celery-redbeat is not installed (it keeps one beat active): "
            "pip install 'snakepit-tasks[beat]'"
        )
    argv = [*celery_argv(), "-A", APP]
    path = None
    if schedule:
        module, path = schedule_module(schedule)
        argv += ["--config", module]
    argv.append("beat")
    if not any(a in ("-S", "--scheduler") or a.startswith("--scheduler=") for a in args):
        argv += ["-S", SCHEDULER]
    if not any(a in ("-l", "--loglevel") or a.startswith("--loglevel=") for a in args):
        argv += ["-l", "info"]
    return [*argv, *args], path
