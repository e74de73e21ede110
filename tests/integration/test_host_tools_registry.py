"""Registering host tools against a real Redis: every validation error (raised in the
registering process), duplicates across processes, a dead registrant's names, the keys'
lifetimes."""

from __future__ import annotations

import os
import signal
import uuid
from typing import Any

import helpers
import pytest
from helpers import wait_until

import snakepit_tasks as sp
from snakepit_tasks import connections, keys
from snakepit_tasks.errors import SnakepitError, ToolRegistrationError

from .host_support import Registrant

pytestmark = pytest.mark.timeout(120)


def new_session() -> str:
    return f"r-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def app(make_app: Any) -> Any:
    return make_app(helpers.pool_table("registry"))


def reason_of(call: Any) -> str:
    with pytest.raises(ToolRegistrationError) as caught:
        call()
    assert isinstance(caught.value, SnakepitError)
    assert str(caught.value)  # a message that says what to fix
    return str(caught.value.details.get("reason"))


@pytest.mark.parametrize("name", ["", "-x", ".x", "_x", "a b", "a/b", "é", "a\n", "x" * 65,
                                  None, 7])
def test_bad_names(app: Any, name: Any) -> None:
    assert reason_of(lambda: sp.register_host_tool(new_session(), name, print)) == (
        "invalid_tool_name")


def test_good_names(app: Any) -> None:
    sid = new_session()
    for name in ("a", "A-1", "x.y_z", "9" * 64):
        sp.register_host_tool(sid, name, print)
    assert sorted(s.name for s in sp.list_host_tools(sid)) == sorted(
        ["a", "A-1", "x.y_z", "9" * 64])
    for name in ("a", "A-1", "x.y_z", "9" * 64):
        assert sp.unregister_host_tool(sid, name)


@pytest.mark.parametrize("metadata", [
    {f"k{i}": i for i in range(33)},  # 33 entries
    {"blob": "x" * 4100},  # over 4 KB encoded
    {"x": object()},  # not JSON
    {"x": float("nan")},
    {1: "int key"},
    ["not", "a", "dict"],
])
def test_bad_metadata(app: Any, metadata: Any) -> None:
    assert reason_of(lambda: sp.register_host_tool(new_session(), "t", print,
                                                   metadata=metadata)) == "invalid_metadata"


def test_metadata_at_the_limits_is_fine(app: Any) -> None:
    sid = new_session()
    sp.register_host_tool(sid, "many", print, metadata={f"k{i}": i for i in range(32)})
    sp.register_host_tool(sid, "big", print, metadata={"b": "x" * 4000})
    assert {s.name: len(s.metadata) for s in sp.list_host_tools(sid)} == {"big": 1, "many": 32}


def test_other_bad_registrations(app: Any) -> None:
    assert reason_of(lambda: sp.register_host_tool(new_session(), "t", "not callable")) == (
        "not_callable")
    for sid in ("", None, "x" * 257, "a\nb"):
        assert reason_of(lambda sid=sid: sp.register_host_tool(sid, "t", print)) == (
            "invalid_session_id")
    assert reason_of(lambda: sp.register_host_tool(new_session(), "t", print,
                                                   description=3)) == "invalid_description"


def test_a_duplicate_name_in_one_session(app: Any) -> None:
    sid = new_session()
    sp.register_host_tool(sid, "calc", lambda: 1)
    assert reason_of(lambda: sp.register_host_tool(sid, "calc", lambda: 2)) == "duplicate_tool"
    with pytest.raises(ToolRegistrationError):
        sp.host_tool(sid, name="calc")(lambda: 3)
    sp.register_host_tool(new_session(), "calc", lambda: 4)  # another session: fine
    assert sp.unregister_host_tool(sid, "calc")
    sp.register_host_tool(sid, "calc", lambda: 5)  # free again
    assert sp.unregister_host_tool(sid, "calc")


def test_the_decorator_keeps_the_function_and_its_doc(app: Any) -> None:
    sid = new_session()

    @sp.host_tool(sid, metadata={"v": 1})
    def calculate_hash(data: str) -> str:
        """SHA-256 of a string.

        More text."""
        return data

    assert calculate_hash("x") == "x"
    [spec] = sp.list_host_tools(sid)
    assert (spec.name, spec.description, spec.metadata, spec.exposed, spec.scope) == (
        "calculate_hash", "SHA-256 of a string.", {"v": 1}, True, "session")
    sp.unregister_host_tool(sid, "calculate_hash")


def test_a_name_held_by_another_live_process(app: Any, redis_url: str,
                                             pids: helpers.ProcessTracker) -> None:
    sid = new_session()
    other = Registrant(redis_url, helpers.pool_table("registry"), sid, pids)
    try:
        with pytest.raises(ToolRegistrationError) as caught:
            sp.register_host_tool(sid, "host_pid", os.getpid)
        assert caught.value.details["reason"] == "duplicate_tool"
        assert f"pid {other.pid}" in str(caught.value)
        # Once that process is gone (killed: nothing cleaned up), the name may be taken.
        os.kill(other.pid, signal.SIGKILL)
        other.proc.wait(10)
        wait_until(lambda: sp.list_host_tools(sid) == [], timeout=30)
        sp.register_host_tool(sid, "host_pid", os.getpid)
        assert [s.name for s in sp.list_host_tools(sid)] == ["host_pid"]
    finally:
        other.close()
        sp.unregister_host_tool(sid, "host_pid")


def test_every_key_has_a_ttl(app: Any, redis_url: str) -> None:
    sid = new_session()
    sp.register_host_tool(sid, "t", print)
    r = connections.redis_client(redis_url)
    assert 0 < r.ttl(keys.host_tools(sid)) <= app.snakepit_settings.session_default_ttl
    leases = [k for k in r.scan_iter(match=keys.host_registrant("*")) if b":requests" not in k]
    assert leases and all(0 < r.pttl(k) <= app.snakepit_settings.node_lease_ttl_ms
                          for k in leases)
    sp.unregister_host_tool(sid, "t")
    assert not r.exists(keys.host_tools(sid))  # the last tool took the hash along
