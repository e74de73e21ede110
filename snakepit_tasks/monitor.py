"""Flower for a snakepit deployment: the command line, and the rule that it never runs open.

Flower shows every node (a Celery worker per pool per host), the pool and node queues and
each call as a task named after its tool. It needs the nodes to send events
(``task_events = true``). Queue lengths on a Redis broker need no ``--broker-api``: Flower
asks the workers which queues they consume (``inspect active_queues``: each node reports
``snakepit.pool.<pool>`` and ``snakepit.node.<node>``) and counts each queue's Redis lists,
priority lists included.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping, Sequence

from .errors import ConfigurationError

#: The app Flower loads (the same as the nodes').
APP = "snakepit_tasks.node.entry"
#: Our own option: start Flower without authentication (a trusted loopback only).
UNSAFE_NO_AUTH = "--unsafe-no-auth"
#: Flower options (and their FLOWER_* variables) that turn authentication on.
AUTH_OPTIONS = ("basic_auth", "auth")


def celery_argv() -> list[str]:
    """How to run this environment's ``celery`` program."""
    celery = shutil.which("celery")
    return [celery] if celery else [sys.executable, "-m", "celery"]


def _options(args: Sequence[str]) -> dict[str, str]:
    """``--name=value`` options as ``{name: value}`` (dashes in names read as underscores,
    as Flower reads them)."""
    found: dict[str, str] = {}
    for arg in args:
        if arg.startswith("--") and "=" in arg:
            name, _, value = arg[2:].partition("=")
            found[name.replace("-", "_")] = value
    return found


def auth_configured(args: Sequence[str], env: Mapping[str, str]) -> str | None:
    """Which authentication option Flower would use (None when it would run open).

    ConfigurationError when basic auth credentials are not ``user:password`` pairs.
    """
    options = _options(args)
    for name in AUTH_OPTIONS:
        value = options.get(name) or env.get(f"FLOWER_{name.upper()}", "")
        if not value:
            continue
        if name == "basic_auth":
            for credential in value.split(","):
                user, sep, password = credential.partition(":")
                if not (user and sep and password):
                    raise ConfigurationError(
                        "Flower basic auth must be USER:PASSWORD[,USER2:PASSWORD2], got an "
                        "entry without a user or a password"
                    )
        return name
    return None


def flower_argv(args: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The Flower command for ``snakepit-tasks flower ARGS``.

    Refuses (ConfigurationError) to start Flower without authentication unless ARGS holds
    ``--unsafe-no-auth``; Flower's other options pass through unchanged.
    """
    rest = [a for a in args if a != UNSAFE_NO_AUTH]
    if len(rest) == len(args) and auth_configured(rest, env) is None:
        raise ConfigurationError(
            "Flower would serve its dashboard and API (which can revoke tasks and shut down "
            "nodes) to anyone who reaches it: give --basic-auth=USER:PASSWORD (or "
            "FLOWER_BASIC_AUTH), or --auth with an OAuth provider; --unsafe-no-auth starts it "
            "open (a trusted loopback only)"
        )
    return [*celery_argv(), "-A", APP, "flower", *rest]
