"""The runtime's logging and prints go to its node's log, tagged with the worker id.

The runtime writes one line per log record to stderr, marked so the node can tell it from
stray output: ``MARK <levelno> <logger> <message as a JSON string>``. The node
(:mod:`snakepit_tasks.node.output`) logs those at their level on ``snakepit_tasks.adapter``,
and everything else the process prints at INFO (stdout) or WARNING (stderr), each line
redacted and prefixed with the worker id.
"""

from __future__ import annotations

import json
import logging
import sys

MARK = "\x1esnakepit-log\x1f"


class LineFormatter(logging.Formatter):
    """One record as one marked line (tracebacks included, newlines escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{MARK}{record.levelno} {record.name or 'root'} {json.dumps(text)}"


def parse(line: str) -> tuple[int, str, str] | None:
    """(level, logger name, message) of a marked line; None for any other line."""
    if not line.startswith(MARK):
        return None
    try:
        level, name, raw = line[len(MARK):].split(" ", 2)
        message = json.loads(raw)
        return int(level), name, str(message)
    except ValueError:
        return None


def install(level: int) -> None:
    """Send this process's log records at ``level`` and above to stderr as marked lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter("%(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
