"""Example Celery beat configuration module: periodic snakepit calls.

Load it as Celery's configuration module next to the node app (this file's directory on
PYTHONPATH, the ``--config`` option before the ``beat`` subcommand)::

    snakepit-tasks beat --schedule /etc/snakepit/beat_schedule.py
    # the same, as the plain Celery command:
    PYTHONPATH=/etc/snakepit celery -A snakepit_tasks.node.entry --config beat_schedule beat -l info

Each entry sends the ``snakepit.execute`` task with the same keyword arguments as
``snakepit_tasks.execute_async``: ``command``, ``args``, ``pool`` and optionally ``timeout``
(seconds; the call fails instead of running later than that), ``session_id`` or
``stream`` (chunks readable later with ``sp.stream_result``). ``"options": {"job": NAME}``
records each run so a page or a script finds it (``snakepit_tasks.jobs.latest(NAME)``).
The call is routed to the pool's queue; if no node serves the pool, beat logs the error and
tries again at the next tick.

The scheduler is celery-redbeat's (extra ``[beat]``): the schedule, each entry's last run and
a lock live in Redis, so any number of beats may run (one per host, for failover) and only
the one holding the lock sends calls; another takes over within ``redbeat_lock_timeout``
seconds (default 30) of its death, without repeating or skipping a run.
"""

from celery.schedules import crontab

beat_scheduler = "redbeat.RedBeatScheduler"
beat_schedule = {
    "ping-default-every-minute": {
        "task": "snakepit.execute",
        "schedule": 60.0,
        "kwargs": {"command": "ping", "args": {}, "pool": "default", "timeout": 30},
    },
    "nightly-batch": {
        "task": "snakepit.execute",
        "schedule": crontab(hour=2, minute=30),
        "kwargs": {"command": "batch_process", "args": {"items": ["a", "b", "c"]},
                   "pool": "compute", "stream": True, "timeout": 3600},
        "options": {"job": "nightly-batch"},
    },
}
timezone = "UTC"
