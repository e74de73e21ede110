"""Guards for one kombu defect the node meets when Redis restarts or a connection drops.

When the broker connection drops while messages are unacknowledged, kombu's Redis transport
keeps using the closed channel: restoring the unacknowledged messages on close, and later
acknowledging a message that finished meanwhile, both raise AttributeError ('NoneType' has no
attribute 'hostname' / 'client'; kombu issues #582 and #970). Celery treats that as an
unrecoverable error and the node stops. The guards:

- skip the restore on close (the messages stay in kombu's unacked set: kombu restores them
  after ``visibility_timeout`` and the janitor takes over those of dead nodes);
- do the acknowledgement over a fresh connection, so a finished call is never redelivered.

The consumer then reconnects as it does after any other connection error.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from kombu.transport import redis as redis_transport
from kombu.transport.virtual import base

from .. import connections

log = logging.getLogger("snakepit_tasks.node")

_installed = False


def install(redis_url: str) -> None:
    """Install the guards once per process (nodes only); ``redis_url`` is the broker's."""
    global _installed
    if _installed:
        return
    restore = base.QoS.restore_unacked_once
    ack = redis_transport.QoS.ack

    @functools.wraps(restore)
    def restore_unacked_once(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return restore(self, *args, **kwargs)
        except AttributeError as exc:
            log.warning("broker connection already gone; unacknowledged messages stay in "
                        "Redis for a later restore (%s)", exc)
            return None

    @functools.wraps(ack)
    def ack_on_closed_channel(self: Any, delivery_tag: Any) -> None:
        try:
            ack(self, delivery_tag)
        except AttributeError:
            r = connections.redis_client(redis_url)
            with r.pipeline(transaction=False) as pipe:
                pipe.zrem(self.unacked_index_key, delivery_tag)
                pipe.hdel(self.unacked_key, delivery_tag)
                pipe.execute()
            base.QoS.ack(self, delivery_tag)

    setattr(base.QoS, "restore_unacked_once", restore_unacked_once)  # noqa: B010
    setattr(redis_transport.QoS, "ack", ack_on_closed_channel)  # noqa: B010
    _installed = True
