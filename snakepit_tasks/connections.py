"""Connections to Redis: one pooled client per URL, and lost connections as project errors."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import redis

from .errors import RedisUnavailable
from .serialization.redact import redact

_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def redis_client(url: str) -> redis.Redis:
    """One shared (thread-safe, pooled) client per URL in this process."""
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            client = redis.Redis.from_url(
                url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30
            )
            _clients[url] = client
        return client


def text(value: bytes | str) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else value


def shown(url: str) -> str:
    """``url`` as it may appear in messages and logs: its password redacted."""
    return redact(url)


@contextlib.contextmanager
def redis_errors_as_snakepit(
    doing: str,
    redis_url: str = "",
    broker_url: str = "",
    *,
    outcome: str = "the call may or may not have been sent",
) -> Iterator[None]:
    """Turn a lost Redis or broker connection into :class:`RedisUnavailable` that names the
    URL it could not reach (password redacted) and, if given, what it means (``outcome``)."""
    from kombu.exceptions import OperationalError

    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, OperationalError) as exc:
        is_broker = isinstance(exc, OperationalError) and broker_url
        url = broker_url if is_broker else redis_url
        what = ("the broker" if is_broker and broker_url != redis_url else "Redis") + (
            f" at {shown(url)}" if url else "")
        raise RedisUnavailable(
            f"{what} could not be reached while {doing}: {redact(str(exc))}; check that it "
            "runs and that redis_url (SNAKEPIT_REDIS_URL or the configuration file) points at "
            "it" + (f" ({outcome})" if outcome else ""),
            {"error": redact(str(exc)), "url": shown(url)},
        ) from None


def close_clients() -> None:
    """Close every client :func:`redis_client` made."""
    with _clients_lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
