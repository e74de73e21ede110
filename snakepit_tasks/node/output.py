"""A runtime's output in its node's log: log records at their level, stray prints as lines,
each tagged with the worker id (and redacted, like every line the package logs)."""

from __future__ import annotations

import logging
import threading
from typing import IO

from ..bridge import logs as runtime_logs

log = logging.getLogger("snakepit_tasks.adapter")

#: Longer lines are split into pieces of this size (a runaway print never grows memory).
MAX_LINE = 16 * 1024


def forward(pipe: IO[bytes], worker_id: str, stream: str) -> threading.Thread:
    """Log every line read from ``pipe`` (the runtime's ``stream``, "stdout" or "stderr")
    until it closes, from a daemon thread; returns the thread."""
    stray = logging.INFO if stream == "stdout" else logging.WARNING

    def run() -> None:
        with pipe:
            while True:
                raw = pipe.readline(MAX_LINE)
                if not raw:
                    return
                line = raw.decode(errors="replace").rstrip("\n")
                record = runtime_logs.parse(line)
                if record is not None:
                    level, name, message = record
                    log.log(level, "[%s] %s: %s", worker_id, name, message)
                elif line.strip():
                    log.log(stray, "[%s] %s: %s", worker_id, stream, line)

    thread = threading.Thread(target=run, name=f"output-{worker_id}-{stream}", daemon=True)
    thread.start()
    return thread
