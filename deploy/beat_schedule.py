"""Example Celery beat configuration module: periodic snakepit calls.

Load it as Celery's configuration module next to the node app (this file's directory on
PYTHONPATH, the ``--config`` option before the ``beat`` subcommand)::

    PYTHONPATH=/etc/snakepit celery -A snakepit_tasks.node.entry --config beat_schedule \
        beat -l info -s /var/lib/snakepit/celerybeat-schedule

Each entry sends the ``snakepit.execute`` task with the same keyword arguments as
``snakepit_tasks.execute_async``: ``command``, ``args``, ``pool`` and optionally ``timeout``
(seconds; the call fails instead of running later than that) or ``session_id``. The call is
routed to the pool's queue; if no node serves the pool, beat logs the error and tries again
at the next tick. Run exactly one beat process.
"""

from celery.schedules import crontab

beat_schedule = {
    "ping-default-every-minute": {
        "task": "snakepit.execute",
        "schedule": 60.0,
        "kwargs": {"command": "ping", "args": {}, "pool": "default", "timeout": 30},
    },
    "add-on-compute-nightly": {
        "task": "snakepit.execute",
        "schedule": crontab(hour=3, minute=0),
        "kwargs": {"command": "add", "args": {"a": 1, "b": 2}, "pool": "compute"},
    },
}
timezone = "UTC"
