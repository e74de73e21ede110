"""snakepit_tasks.call: one call message, parsed and validated the same way on both sides."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import pytest

from snakepit_tasks.call import FIELDS, TASK_NAME, Call, timeout_seconds
from snakepit_tasks.errors import ConfigurationError, SerializationError


def test_fields_are_the_dataclass_fields_in_positional_order() -> None:
    assert tuple(f.name for f in dataclasses.fields(Call)) == FIELDS
    assert FIELDS[:4] == ("command", "args", "pool", "timeout")
    assert TASK_NAME == "snakepit.execute"


def test_parse_folds_positional_arguments() -> None:
    call = Call.parse(("ping", {"x": 1}), {"pool": "a"})
    assert (call.command, call.args, call.pool) == ("ping", {"x": 1}, "a")
    assert Call.parse((), {"command": "ping"}).args == {}


def test_round_trip_through_task_kwargs() -> None:
    call = Call.parse(("add", {"a": 1}), {"session_id": "s", "affinity": "strict_queue"})
    again = Call.parse((), call.to_kwargs())
    assert again == call
    assert set(call.to_kwargs()) == set(FIELDS)


def test_positional_order_follows_fields() -> None:
    values: list[Any] = ["ping", {}, "p", 1.0, time.time() + 5, "s", True, "hint", True, "p@h/0",
                         False, time.time(), ("cuda",)]
    assert len(values) == len(FIELDS)
    call = Call.parse(tuple(values), {})
    assert [getattr(call, f) for f in FIELDS] == values


def test_rejects_duplicates_unknown_and_too_many() -> None:
    with pytest.raises(SerializationError, match="'command' twice"):
        Call.parse(("ping",), {"command": "other"})
    with pytest.raises(SerializationError, match="'bogus', 'zzz'"):
        Call.parse(("ping",), {"zzz": 1, "bogus": 2})
    with pytest.raises(SerializationError, match="at most"):
        Call.parse(tuple(range(len(FIELDS) + 1)), {})
    with pytest.raises(SerializationError, match="list of positional"):
        Call.parse("ping", {})
    with pytest.raises(SerializationError, match="dict of keyword"):
        Call.parse((), ["ping"])


@pytest.mark.parametrize(
    "command", [None, "", 5, b"ping", "a\x00b", "line\nbreak", "x" * 300]
)
def test_bad_tool_names(command: Any) -> None:
    with pytest.raises(SerializationError):
        Call.parse((command,), {})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"args": [1, 2]},
        {"args": "x"},
        {"timeout": 0},
        {"timeout": -1},
        {"timeout": "10"},
        {"timeout": True},
        {"timeout": math.nan},
        {"timeout": math.inf},
        {"deadline": "soon"},
        {"enqueued_at": math.nan},
        {"session_id": 5},
        {"session_id": "s" * 257},
        {"session_id": "a\x00"},
        {"stream": "yes"},
        {"reply": 1},
        {"fallback": None},
        {"pool": 3},
        {"pool": "a\tb"},
        {"worker": 7},
    ],
)
def test_bad_values_are_serialization_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(SerializationError):
        Call.parse(("ping",), kwargs)


def test_bad_affinity_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="affinity must be one of"):
        Call.parse(("ping",), {"affinity": "sticky"})


def test_defaults_fill_pool_deadline_and_queue_clock() -> None:
    now = 1000.0
    call = Call.parse(("ping",), {}, default_pool="p", default_timeout_ms=2000, now=now)
    assert (call.pool, call.deadline, call.enqueued_at) == ("p", 1002.0, now)
    timed = Call.parse(("ping",), {"timeout": 3}, default_pool="p", default_timeout_ms=2000,
                       now=now)
    assert timed.deadline == 1003.0
    streaming = Call.parse(("s",), {"stream": True}, default_pool="p", default_timeout_ms=2000,
                           streaming_timeout_ms=9000, now=now)
    assert streaming.deadline == 1009.0
    kept = Call.parse(("ping",), {"deadline": 5.0, "pool": "q"}, default_pool="p",
                      default_timeout_ms=2000, now=now)
    assert (kept.pool, kept.deadline) == ("q", 5.0)


def test_without_defaults_nothing_is_filled() -> None:
    call = Call.parse(("ping",), {})
    assert call.pool is None and call.deadline is None and call.enqueued_at is None


def test_empty_session_id_means_none() -> None:
    assert Call.parse(("ping",), {"session_id": ""}).session_id is None


def test_replace_keeps_the_rest() -> None:
    call = Call.parse(("ping",), {"worker": "n/0", "fallback": True})
    moved = call.replace(worker=None, fallback=False)
    assert moved.worker is None and not moved.fallback and moved.command == "ping"


def test_timeout_seconds() -> None:
    assert timeout_seconds(None, 1500) == 1.5
    assert timeout_seconds(2, 1500) == 2.0
    for bad in ("10", 0, -1, math.nan, True, [1]):
        with pytest.raises(SerializationError, match="timeout must be"):
            timeout_seconds(bad, 1500)


def test_requires_is_a_list_of_known_capabilities() -> None:
    call = Call.parse((), {"command": "ping", "requires": ["cuda", "avx2"]})
    assert call.requires == ("cuda", "avx2")
    assert Call.parse((), call.to_kwargs()) == call
    assert Call.parse((), {"command": "ping", "requires": None}).requires == ()
    with pytest.raises(ConfigurationError, match="unknown capability 'gpu'.*cuda"):
        Call.parse((), {"command": "ping", "requires": ["gpu"]})
    with pytest.raises(SerializationError, match="list of capability names"):
        Call.parse((), {"command": "ping", "requires": "cuda"})
    with pytest.raises(ConfigurationError, match="unknown capability"):
        Call.parse((), {"command": "ping", "requires": [{"x": 1}]})
