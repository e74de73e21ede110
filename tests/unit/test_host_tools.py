"""The tool bridge's pure parts: registration rules, node ↔ registrant messages, the
re-entrancy check, the adapter's error mapping, settings, global tools."""

from __future__ import annotations

from typing import Any

import pytest

from snakepit_tasks._proto import bridge_pb2 as pb
from snakepit_tasks.bridge import SessionContext
from snakepit_tasks.bridge.host_client import error_of
from snakepit_tasks.config import PoolConfig, load_settings
from snakepit_tasks.errors import (
    AdapterError,
    ConfigurationError,
    ExecutionTimeout,
    HostToolError,
    SerializationError,
    SnakepitError,
    ToolNotFound,
    ToolRegistrationError,
    WorkerBusy,
    from_wire,
    to_wire,
)
from snakepit_tasks.host_tools import context, spec, wire
from snakepit_tasks.node.host_tools import HostToolsServicer, load_global_tools
from snakepit_tasks.node.worker import WorkerStartError


# -- registration rules ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a", "Z9", "a-b_c.d", "0" * 64])
def test_valid_names(name: str) -> None:
    assert spec.check_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", ".a", "_a", "a b", "a\n", "a$", "ü", "0" * 65, None])
def test_invalid_names(name: Any) -> None:
    with pytest.raises(ToolRegistrationError) as caught:
        spec.check_name(name)
    assert caught.value.details["reason"] == "invalid_tool_name"


def test_metadata_limits() -> None:
    assert spec.check_metadata(None) == {}
    assert len(spec.check_metadata({f"k{i}": i for i in range(32)})) == 32
    for bad in ({f"k{i}": i for i in range(33)}, {"x": "y" * 4096}, {"x": {1, 2}}, [1], {2: 3},
                {"x": float("inf")}):
        with pytest.raises(ToolRegistrationError) as caught:
            spec.check_metadata(bad)
        assert caught.value.details["reason"] == "invalid_metadata"


def test_arguments_from_a_dict_keywords_or_both() -> None:
    assert spec.merge_arguments("t", {"a": 1}, {}) == {"a": 1}
    assert spec.merge_arguments("t", None, {"a": 1}) == {"a": 1}
    assert spec.merge_arguments("t", {"a": 1}, {"b": 2}) == {"a": 1, "b": 2}
    with pytest.raises(SerializationError, match="both"):
        spec.merge_arguments("t", {"a": 1}, {"a": 2})
    with pytest.raises(SerializationError, match="dict"):
        spec.merge_arguments("t", [1], {})


# -- messages ----------------------------------------------------------------------------------
def test_request_round_trip() -> None:
    req = wire.Request(id="r1", session_id="s", tool="t", deadline=12.5, args=b'{"a":1}',
                       call_id="c", worker_id="n/0", capacity=3)
    assert wire.decode_request(wire.encode_request(req)) == req
    with pytest.raises(ValueError):
        wire.decode_request(b"not json")


def test_replies() -> None:
    assert wire.decode_reply(wire.ok_reply(b'{"x":1}')) == (True, b'{"x":1}')
    ok, error = wire.decode_reply(wire.error_reply(wire.HOST_TOOL, "boom", "ValueError", "tb"))
    assert not ok and error == {"kind": "host_tool", "type": "ValueError", "message": "boom",
                                "traceback": "tb"}
    ok, error = wire.decode_reply(b"0garbage")
    assert not ok and isinstance(error, dict) and error["kind"] == wire.BAD_REQUEST


# -- re-entrancy -------------------------------------------------------------------------------
def test_a_strict_call_back_into_the_waiting_worker_fails_fast() -> None:
    context.check_reentry("s", "n/0", "strict_queue", True)  # not inside a host tool: fine
    with context.serving(context.Serving("s", "reenter", "n/0", 1)):
        for mode in ("strict_queue", "strict_fail_fast"):
            with pytest.raises(WorkerBusy, match="re-entrant.*'reenter'") as caught:
                context.check_reentry("s", "n/0", mode, True)
            assert caught.value.details["reason"] == "reentrant"
        context.check_reentry("s", "n/0", "hint", True)  # another worker serves it
        context.check_reentry("s", "n/0", "strict_queue", False)  # a free slot serves it
        context.check_reentry("s", "n/1", "strict_queue", True)  # not the waiting worker
        context.check_reentry("other", "n/0", "strict_queue", True)
    assert context.current() is None


# -- the adapter's errors ----------------------------------------------------------------------
def test_errors_in_the_adapter() -> None:
    def info(kind: str, **fields: Any) -> pb.ErrorInfo:
        return pb.ErrorInfo(kind=kind, **fields)

    missing = error_of("t", "s", info("tool_not_found", message="no t",
                                      available_tools=["a", "b"]))
    assert isinstance(missing, ToolNotFound) and missing.details["available"] == ["a", "b"]
    raised = error_of("t", "s", info("host_tool", type="KeyError", message="'k'",
                                     traceback="tb"))
    assert isinstance(raised, HostToolError) and isinstance(raised, AdapterError)
    assert raised.type == "KeyError" and raised.traceback == "tb"
    assert str(raised) == "host tool 't' raised KeyError: 'k'"
    assert isinstance(error_of("t", "s", info("timeout", message="m")), ExecutionTimeout)
    assert isinstance(error_of("t", "s", info("serialization", message="m")),
                      SerializationError)
    assert type(error_of("t", "s", info("weird", message="m"))) is SnakepitError


def test_new_errors_cross_the_wire_as_themselves() -> None:
    for exc in (HostToolError("m", {"type": "ValueError"}), ToolRegistrationError("m")):
        back = from_wire(to_wire(exc))
        assert type(back) is type(exc) and back.details == exc.details


def test_a_context_without_a_node_says_so() -> None:
    ctx = SessionContext(session_id="s")
    with pytest.raises(SnakepitError, match="not started by a node"):
        ctx.call_host_tool("t", {})
    with pytest.raises(SnakepitError, match="not started by a node"):
        ctx.host_tools["t"](x=1)


# -- settings and global tools -----------------------------------------------------------------
def test_settings() -> None:
    s = load_settings(pools=[{"name": "p", "host_tools": ["a.b:f", "c:G.h"]}])
    assert s.pools[0].host_tools == ("a.b:f", "c:G.h") and s.host_tool_timeout_ms == 30_000
    for bad in (["nocolon"], ["a:"], [":f"], ["a:b:c"], [3]):
        with pytest.raises(ConfigurationError):
            load_settings(pools=[{"name": "p", "host_tools": bad}])
    with pytest.raises(ConfigurationError, match="host_tool_timeout_ms"):
        load_settings(host_tool_timeout_ms=0)


def test_global_tools_are_loaded_by_name() -> None:
    tools = load_global_tools(PoolConfig(name="p", host_tools=("json:dumps", "os:getpid")))
    assert sorted(tools) == ["dumps", "getpid"]
    assert all(t.spec.scope == "global" for t in tools.values())
    for bad in (("os:no_such_thing",), ("no_such_module_x:f",), ("os:sep",),
                ("os:getpid", "posix:getpid")):
        with pytest.raises(WorkerStartError) as caught:
            load_global_tools(PoolConfig(name="p", host_tools=bad))
        assert caught.value.details["adapter_load"] is True


class _Deadline:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


def test_the_wait_is_bounded_by_the_setting_and_the_calls_deadline() -> None:
    settings = load_settings(host_tool_timeout_ms=2_000)
    servicer = HostToolsServicer.__new__(HostToolsServicer)
    servicer.settings, servicer.timeout_s = settings, 2.0
    assert servicer._budget(_Deadline(None)) == (2.0, "host_tool_timeout_ms (2000)")
    assert servicer._budget(_Deadline(60.0))[0] == 2.0
    budget, why = servicer._budget(_Deadline(1.0))
    assert budget < 1.0 and why == "the call's own deadline"
