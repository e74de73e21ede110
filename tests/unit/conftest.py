"""Fixtures for the unit tests: no SNAKEPIT_* variables leak in, fakeredis instead of Redis."""

from __future__ import annotations

import os
from collections.abc import Iterator

import fakeredis
import pytest

from snakepit_tasks import connections


@pytest.fixture(autouse=True)
def _no_snakepit_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests see only the SNAKEPIT_* variables they set themselves."""
    for name in list(os.environ):
        if name.startswith("SNAKEPIT_"):
            monkeypatch.delenv(name)


@pytest.fixture
def fake_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[fakeredis.FakeRedis]:
    """A fresh in-memory Redis that ``connections.redis_client`` returns for every URL."""
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    monkeypatch.setattr(connections, "redis_client", lambda url: client)
    yield client
    client.close()
