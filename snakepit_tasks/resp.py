"""A lean Redis round trip for the hot paths: the fast lane's send and take, claims, finishes.

redis-py's pipeline spends more CPU per call than the rest of a fast-lane call's Python (its
command stack, per-argument encoding, response callbacks, observability hooks): here the
commands are packed straight into RESP and written and read on one pooled connection of the
same client, with the client's own retry and reconnect on a lost connection, as a pipeline
does. Replies come back as the parser reads them (no response callbacks: a BLPOP's is a list
or None).
"""

from __future__ import annotations

from typing import Any

import redis

Arg = str | bytes | int | float


def pack(*args: Arg) -> bytes:
    """One command in RESP: an array of bulk strings (str as UTF-8, numbers as digits)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bool):  # a bool is an int: say so rather than send 0 or 1
            raise TypeError("a Redis argument cannot be a bool; send '1' or '0'")
        elif isinstance(arg, int):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            raise TypeError(f"a Redis argument is str, bytes or a number, got {type(arg).__name__}")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Batch:
    """Commands packed for one :func:`round_trip` or :func:`transaction`, queued with the
    names and argument order of a redis-py pipeline's methods (those the node's finish uses),
    so code that fills a pipeline can fill a batch."""

    def __init__(self, *commands: bytes) -> None:
        self.commands = list(commands)

    def set(self, name: str, value: Arg) -> None:
        self.commands.append(pack("SET", name, value))

    def setex(self, name: str, seconds: int, value: Arg) -> None:
        self.commands.append(pack("SETEX", name, seconds, value))

    def publish(self, channel: str, message: Arg) -> None:
        self.commands.append(pack("PUBLISH", channel, message))

    def zrem(self, name: str, *members: Arg) -> None:
        self.commands.append(pack("ZREM", name, *members))

    def hdel(self, name: str, *fields: Arg) -> None:
        self.commands.append(pack("HDEL", name, *fields))


def round_trip(r: redis.Redis, *commands: bytes) -> list[Any]:
    """Send the packed ``commands`` in one write and read their replies, in order. A reply
    that is an error comes back as its :class:`redis.ResponseError` (as a pipeline's
    ``execute(raise_on_error=False)``); a lost connection is retried as the client's retry
    policy says, then raised (redis.ConnectionError / TimeoutError)."""
    pool = r.connection_pool
    conn = pool.get_connection()
    try:
        return list(conn.retry.call_with_retry(
            lambda: _exchange(conn, commands), lambda _error: conn.disconnect()))
    except BaseException:
        # Replies may be left unread (an interrupt between two reads): never reuse it so.
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


def transaction(r: redis.Redis, *commands: bytes) -> list[Any]:
    """Run the packed ``commands`` in one MULTI/EXEC, in one round trip: their replies (a
    command's error in its place). Raises what made Redis refuse the whole transaction."""
    # A command refused when queued comes first (EXEC then answers EXECABORT).
    answers = raise_first_error(round_trip(r, pack("MULTI"), *commands, pack("EXEC")))
    return list(answers[-1])


def raise_first_error(answers: list[Any]) -> list[Any]:
    """``answers`` (of :func:`round_trip` or :func:`transaction`), unless one is an error:
    then the first error is raised."""
    for answer in answers:
        if isinstance(answer, Exception):
            raise answer
    return answers


def _exchange(conn: Any, commands: tuple[bytes, ...]) -> list[Any]:
    conn.send_packed_command([b"".join(commands)])
    answers: list[Any] = []
    for _ in commands:
        try:
            answers.append(conn.read_response())
        except redis.ResponseError as exc:
            answers.append(exc)
    return answers
