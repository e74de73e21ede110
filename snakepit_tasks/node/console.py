"""What a node prints besides its log: Celery's banner and shutdown notices only when asked
(without ``--quiet``), and broker URLs masked only where they hold a password.

kombu masks the password of every URL it shows, also of one that has none, so a plain
``redis://host:6379/0`` reads ``redis://:**@host:6379/0`` in the banner and in "Connected to"
lines; :func:`install` makes such URLs show as they are.
"""

from __future__ import annotations

import functools
from typing import Any

from kombu import Connection

_installed = False


def install() -> None:
    """Show URLs without a password unmasked (once per process; nodes only)."""
    global _installed
    if _installed:
        return
    as_uri = Connection.as_uri

    @functools.wraps(as_uri)
    def as_uri_masking_only_passwords(
        self: Connection, include_password: bool = False, *args: Any, **kwargs: Any
    ) -> str:
        if not self.password:
            include_password = True  # nothing to hide: show the URL as it is
        return str(as_uri(self, include_password, *args, **kwargs))

    setattr(Connection, "as_uri", as_uri_masking_only_passwords)  # noqa: B010
    _installed = True


def quiet_shutdown(worker: Any) -> None:
    """Stop Celery from printing ``worker: Warm shutdown (MainProcess)`` on SIGTERM (a quiet
    node prints nothing of Celery's own). Call after Celery installed its handlers."""
    from celery.apps import worker as celery_worker

    install_handler = getattr(celery_worker, "install_worker_term_handler", None)
    if install_handler is not None:
        install_handler(worker, verbose=False)
