"""Logging: silent by default (errors only), levels and categories from the settings, and
secrets redacted from every line snakepit-tasks logs.

``log_level`` is one of :data:`LOG_LEVELS`; ``log_categories`` (empty: all) limits it to some
of :data:`CATEGORIES`, the others staying at ``error``. Each category is a set of loggers; every
logger of the package is one of them (a test checks it), so :func:`configure` reaches all of
them and puts :class:`RedactingFilter` on each.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from ..serialization.redact import redact

#: ``none`` silences even errors.
LOG_LEVELS: dict[str, int] = {
    "none": logging.CRITICAL + 10,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}

#: Category → the loggers it covers.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "pool": ("snakepit_tasks.node", "snakepit_tasks.supervisor", "snakepit_tasks.processes"),
    "grpc": ("snakepit_tasks.grpc",),
    "heartbeat": ("snakepit_tasks.heartbeat",),
    "session": ("snakepit_tasks.session",),
    "bridge": ("snakepit_tasks.bridge", "snakepit_tasks.host_tools"),
    "adapter": ("snakepit_tasks.adapter",),
    "stream": ("snakepit_tasks.streaming",),
    "janitor": ("snakepit_tasks.janitor",),
    "resilience": ("snakepit_tasks.resilience",),
    "telemetry": ("snakepit_tasks.telemetry",),
    "hardware": ("snakepit_tasks.hardware",),
    "zero_copy": ("snakepit_tasks.zero_copy",),
}

ROOT = "snakepit_tasks"
LOGGERS: tuple[str, ...] = tuple(name for names in CATEGORIES.values() for name in names)
FORMAT = "[%(asctime)s: %(levelname)s/%(name)s] %(message)s"


class RedactingFilter(logging.Filter):
    """Replaces a record's message (and traceback text) by its :func:`redact`-ed form."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler to report
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()


def level_for(log_level: str, log_categories: Iterable[str], category: str) -> int:
    """The level of ``category``'s loggers under these settings."""
    chosen = tuple(log_categories)
    if chosen and category not in chosen:
        return max(LOG_LEVELS[log_level], LOG_LEVELS["error"])
    return LOG_LEVELS[log_level]


def configure(
    log_level: str = "error",
    log_categories: Iterable[str] = (),
    *,
    handler: bool = False,
) -> None:
    """Set every package logger's level and redaction; with ``handler``, also give the
    package a stderr handler when neither it nor the root logger has one (node processes)."""
    categories = tuple(log_categories)
    for category, names in CATEGORIES.items():
        level = level_for(log_level, categories, category)
        for name in names:
            logger = logging.getLogger(name)
            logger.setLevel(level)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
    root = logging.getLogger(ROOT)
    root.setLevel(LOG_LEVELS[log_level])
    if _FILTER not in root.filters:
        root.addFilter(_FILTER)
    if handler and not root.handlers and not logging.getLogger().handlers:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter(FORMAT))
        stream.addFilter(_FILTER)
        root.addHandler(stream)
