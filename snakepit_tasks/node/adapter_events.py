"""Events a tool emitted (:mod:`snakepit_tasks.bridge.telemetry`), re-emitted in the node as
``("snakepit", "adapter", *name.split("."))`` with the worker, call, tool, pool and node."""

from __future__ import annotations

import json
import logging
from typing import Any

from .. import telemetry
from ..errors import TelemetryError
from ..telemetry.events import adapter_event, check_adapter_name
from .worker import AdapterWorker

log = logging.getLogger("snakepit_tasks.telemetry")


def reemit(worker: AdapterWorker, message: Any) -> None:
    """Re-emit the events ``message`` (a runtime's response, chunk or heartbeat) carries."""
    if message.events_dropped:
        log.warning("worker %s dropped %d telemetry event(s): its buffer was full",
                    worker.worker_id, message.events_dropped)
    for sent in message.events:
        try:
            event = adapter_event(check_adapter_name(sent.name))
        except TelemetryError:
            log.warning("worker %s sent a telemetry event with an invalid name: %r",
                        worker.worker_id, sent.name[:100])
            continue
        if not telemetry.has_handlers(event):
            continue
        try:
            metadata = json.loads(sent.metadata) if sent.metadata else {}
        except ValueError:
            metadata = {}
        if not isinstance(metadata, dict):
            metadata = {}
        metadata.update(worker_id=worker.worker_id, call_id=sent.call_id, tool=sent.tool,
                        pool=worker.pool, node=worker.node)
        measurements = {**sent.measurements, "system_time": sent.time_ns}
        telemetry.emit(event, measurements, metadata)
