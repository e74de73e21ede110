"""A node's zygote, started as soon as the process knows it runs a node.

The zygote (:mod:`.zygote`) spends a quarter of a second importing the runtime before it can
fork the first worker. Started by the node step, that came after Celery's and the node's own
imports, and the first worker waited for it. :func:`start` runs when
``celery -A snakepit_tasks.node.entry worker ...`` imports its app (see :mod:`.entry`), so the
zygote imports while Celery and the node boot; the node step then adopts it (:func:`adopt`),
or stops it and starts its own when what it was started for no longer matches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import PoolConfig, Settings
from ..errors import ConfigurationError
from .worker import settings_env, worker_env
from .zygote import Zygote, ZygoteUnavailable

log = logging.getLogger("snakepit_tasks.node")

#: Celery's options before its subcommand that take a value (``-A app``, ``-b url``, ...).
_CELERY_VALUE_OPTIONS = frozenset({"-A", "--app", "-b", "--broker", "--result-backend",
                                   "--loader", "--config", "--workdir"})

#: What Celery's logging set-up adds to the environment (for its own pool's processes) after
#: the entry ran: no reason to start another zygote (the workers get them, in their own
#: environment, as before).
_CELERY_LOG_VARIABLES = frozenset({"CELERY_LOG_LEVEL", "CELERY_LOG_FILE", "_MP_FORK_LOGLEVEL_",
                                   "_MP_FORK_LOGFILE_", "_MP_FORK_LOGFORMAT_"})


def pool_env(settings: Settings, pool: PoolConfig) -> dict[str, str]:
    """The environment the workers of ``pool`` start with (before their device variables)."""
    return worker_env(dict(os.environ), pool.worker_profile,
                      {**settings_env(settings), **pool.adapter_env})


def node_pool(settings: Settings, option: str | None) -> PoolConfig:
    """The pool a node serves: ``--snakepit-pool`` (``option``), else ``SNAKEPIT_NODE_POOL``,
    else the first configured; ConfigurationError when it is not configured."""
    return settings.pool(option or os.environ.get("SNAKEPIT_NODE_POOL")
                         or settings.default_pool_name)


@dataclass(frozen=True)
class EarlyZygote:
    """A zygote started before the node step, and what it was started for."""

    zygote: Zygote
    pool: str
    env: dict[str, str]
    pid: int  # the process that started it (a worker that daemonizes is another)


def worker_pool(argv: Sequence[str]) -> str | None:
    """For a ``celery ... worker`` command line that stays in the foreground, the pool it
    names with ``--snakepit-pool`` ("" when none); None for any other command."""
    program = Path(argv[0]) if argv else Path()
    if not (program.name == "celery" or program.parent.name == "celery"):
        return None  # not Celery's program (``celery`` or ``python -m celery``)
    args = list(argv[1:])
    i = 0
    while i < len(args) and args[i].startswith("-"):  # Celery's own options
        i += 2 if args[i] in _CELERY_VALUE_OPTIONS else 1
    if i >= len(args) or args[i] != "worker":
        return None
    pool = ""
    rest = args[i + 1:]
    for j, arg in enumerate(rest):
        if arg in ("-D", "--detach", "--help"):
            return None  # a daemon forks away from what starts here; help starts nothing
        if arg == "--snakepit-pool" and j + 1 < len(rest):
            pool = rest[j + 1]
        elif arg.startswith("--snakepit-pool="):
            pool = arg.partition("=")[2]
    return pool


def start(settings: Settings, argv: Sequence[str]) -> EarlyZygote | None:
    """Start the zygote of the pool a ``celery ... worker`` command line (``argv``) serves,
    when its workers fork (``worker_start_method = "fork"``). None otherwise, and when the
    pool cannot be found or the zygote cannot start: the node step then says why, as before.
    """
    if settings.worker_start_method != "fork":
        return None
    name = worker_pool(argv)
    if name is None:
        return None
    try:
        pool = node_pool(settings, name)
    except ConfigurationError:
        return None
    env = pool_env(settings, pool)
    zygote = Zygote(env, name=pool.name, instance=settings.instance_name)
    try:
        zygote.start(forward=False)  # its output is logged once the node has its name
    except ZygoteUnavailable:
        return None
    return EarlyZygote(zygote, pool.name, env, os.getpid())


def adopt(early: EarlyZygote | None, pool: PoolConfig, env: dict[str, str],
          node_name: str) -> Zygote | None:
    """The early zygote, if it was started by this process for ``pool`` with ``env``, now
    named ``node_name``; else None (one that does not match is stopped)."""
    if early is None or early.pid != os.getpid():
        return None  # in a forked copy of the starting process it is not ours to stop
    if early.pool != pool.name or _without_celery_log(early.env) != _without_celery_log(env):
        log.debug("node %s: the zygote started for pool %r does not match; starting another",
                  node_name, early.pool)
        early.zygote.stop()
        return None
    early.zygote.name = node_name
    early.zygote.forward_output()
    return early.zygote


def _without_celery_log(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in _CELERY_LOG_VARIABLES}
