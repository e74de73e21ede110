"""A nightly batch job on celery beat, its progress recorded for a page or a script to read.

This file is also the beat's schedule (a Celery configuration module)::

    snakepit-tasks beat --schedule examples/beat_batch.py
    # or, with examples/ on PYTHONPATH:
    celery -A snakepit_tasks.node.entry --config beat_batch beat -S redbeat.RedBeatScheduler

Each night at 02:30 UTC beat sends ``batch_process`` over ``ITEMS`` as a streaming call and
records the run as job ``nightly-batch``; any process reads its progress later with
``sp.stream_result(jobs.latest("nightly-batch"))``.

Run as a script, it shows one run end to end: a pool, a beat whose schedule fires every
``BATCH_EVERY_SECONDS`` (default 2) instead of nightly, the run beat sends, and its progress
read back as a late reader would::

    python examples/beat_batch.py
    python examples/beat_batch.py --progress     # the latest run's progress (a real Redis)
"""

from __future__ import annotations

import os

from celery.schedules import crontab

JOB = "nightly-batch"
ITEMS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
_every = os.environ.get("BATCH_EVERY_SECONDS")

beat_schedule = {
    JOB: {
        "task": "snakepit.execute",
        "schedule": float(_every) if _every else crontab(hour=2, minute=30),
        "kwargs": {"command": "batch_process", "args": {"items": ITEMS, "delay": 0.05},
                   "stream": True, "timeout": 3600},
        "options": {"job": JOB},
    },
}
timezone = "UTC"


def show_progress(task_id: str) -> None:
    """Print a run's progress from its first chunk to its result (waits while it runs)."""
    from _common import say

    import snakepit_tasks as sp

    stream = sp.stream_result(task_id)
    for chunk in stream:
        say(f"  {chunk['done']}/{chunk['total']} {chunk['item']}", chunk["result"])
    say("  result", {k: stream.result[k] for k in ("processed", "worker_id")})


def run_once() -> None:
    """Start a beat on a fast schedule, wait for the run it sends, read that run's progress."""
    import subprocess
    import sys
    import time

    from _common import say

    import snakepit_tasks as sp
    from snakepit_tasks import jobs

    settings = sp.default_app().snakepit_settings
    env = dict(os.environ, SNAKEPIT_REDIS_URL=settings.redis_url,
               BATCH_EVERY_SECONDS=os.environ.get("BATCH_EVERY_SECONDS", "2"))
    before = jobs.latest(JOB)
    beat = subprocess.Popen(
        [sys.executable, "-m", "snakepit_tasks", "beat", "--schedule", os.path.abspath(__file__),
         "--loglevel", "warning"],
        env=env, stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while (run := jobs.latest(JOB)) in (None, before):
            if time.monotonic() > deadline or beat.poll() is not None:
                raise SystemExit("beat sent no run within 60 s")
            time.sleep(0.2)
    finally:
        beat.terminate()
        beat.wait(30)
        forget_fast_schedule()
    say(f"beat sent {JOB} as task", run)
    show_progress(run)
    say("its schedule in production", beat_schedule[JOB]["schedule"] if _every
        else "crontab(hour=2, minute=30) UTC")


def forget_fast_schedule() -> None:
    """Remove the job's entry from the Redis-held schedule (it fired every few seconds); a
    beat started with this schedule writes it back."""
    from redbeat.schedulers import RedBeatSchedulerEntry, ensure_conf, get_redis

    import snakepit_tasks as sp

    app = sp.default_app()
    ensure_conf(app)
    RedBeatSchedulerEntry(JOB, app=app).delete()
    get_redis(app).srem(app.redbeat_conf.statics_key, JOB)


def latest_progress() -> None:
    """Print the progress of the job's latest run, if Redis still holds one."""
    from _common import say

    from snakepit_tasks import jobs

    run = jobs.latest(JOB)
    if run is None:
        say(f"no run of {JOB} is recorded")
        return
    say(f"latest run of {JOB}", run)
    show_progress(run)


if __name__ == "__main__":
    import sys

    from _common import use_pool

    import snakepit_tasks as sp

    use_pool()
    sp.run_as_script(latest_progress if "--progress" in sys.argv else run_once, exit_mode="stop")
