"""snakepit_tasks.node.console: broker URLs are masked only where they hold a password."""

from __future__ import annotations

from kombu import Connection

from snakepit_tasks.node import console


def test_urls_without_a_password_show_as_they_are() -> None:
    console.install()
    console.install()  # idempotent
    assert Connection("redis://127.0.0.1:6379/0").as_uri() == "redis://127.0.0.1:6379/0"
    assert Connection("redis://:secret@127.0.0.1:6379/0").as_uri() == (
        "redis://:**@127.0.0.1:6379/0")
    assert "secret" not in Connection("redis://user:secret@host:6379/1").as_uri()
    assert Connection("redis://:secret@h:1/0").as_uri(include_password=True) == (
        "redis://:secret@h:1/0")
