"""snakepit_tasks.bridge.runtime in-process: the servicer called directly with protobufs."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from adapters.showcase import ShowcaseAdapter
from snakepit_tasks._proto import bridge_pb2 as pb
from snakepit_tasks.bridge import BaseAdapter, ThreadSafeAdapter, tool
from snakepit_tasks.bridge.runtime import AdapterServicer, load_adapter


class FakeContext:
    """The bits of grpc.ServicerContext the servicer uses."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []

    def add_callback(self, fn: Callable[[], None]) -> bool:
        self.callbacks.append(fn)
        return True

    def cancel(self) -> None:
        for fn in self.callbacks:
            fn()


def request(tool_name: str, args: Any = None, **fields: Any) -> pb.ExecuteRequest:
    payload = (
        pb.Payload(data=json.dumps(args).encode(), encoding="json") if args is not None else None
    )
    return pb.ExecuteRequest(call_id="c1", tool=tool_name, args=payload, **fields)


def result_of(resp: pb.ExecuteResponse) -> Any:
    assert resp.ok, resp.error
    assert resp.result.encoding == "json"
    return json.loads(resp.result.data)


@pytest.fixture
def showcase() -> AdapterServicer:
    return AdapterServicer(ShowcaseAdapter, "w/0", 1)


def inflight(servicer: AdapterServicer) -> int:
    return servicer.Heartbeat(pb.HeartbeatRequest(seq=1), None).inflight


# -- Execute -------------------------------------------------------------------------------


def test_execute_ok(showcase: AdapterServicer) -> None:
    resp = showcase.Execute(request("add", {"a": 2, "b": 3}), None)
    assert result_of(resp) == 5
    assert resp.duration_us >= 0
    assert inflight(showcase) == 0


def test_execute_without_args_payload(showcase: AdapterServicer) -> None:
    value = result_of(showcase.Execute(request("ping"), None))
    assert value["status"] == "pong"
    assert value["worker_id"] == "w/0"
    assert value["pid"] == os.getpid()


def test_execute_session_context(showcase: AdapterServicer) -> None:
    value = result_of(showcase.Execute(request("ping", {}, session_id="sess-1"), None))
    assert value["session_id"] == "sess-1"


def test_tool_not_found_lists_available_tools(showcase: AdapterServicer) -> None:
    resp = showcase.Execute(request("nope", {}), None)
    assert not resp.ok
    assert resp.error.kind == "tool_not_found"
    assert resp.error.type == "ToolNotFound"
    assert "'nope'" in resp.error.message
    assert list(resp.error.available_tools) == sorted(ShowcaseAdapter.tools())
    assert "add" in resp.error.available_tools
    assert inflight(showcase) == 0


def test_adapter_error_carries_type_message_traceback(showcase: AdapterServicer) -> None:
    resp = showcase.Execute(request("fail", {"message": "bad input", "kind": "KeyError"}), None)
    assert not resp.ok
    assert resp.error.kind == "adapter"
    assert resp.error.type == "KeyError"
    assert "bad input" in resp.error.message
    assert resp.error.traceback.startswith("Traceback (most recent call last)")
    assert "showcase.py" in resp.error.traceback
    assert "KeyError" in resp.error.traceback
    assert inflight(showcase) == 0


def test_wrong_arguments_are_an_adapter_error(showcase: AdapterServicer) -> None:
    resp = showcase.Execute(request("add", {"a": 1, "c": 2}), None)
    assert not resp.ok
    assert resp.error.kind == "adapter"
    assert resp.error.type == "TypeError"


def test_bad_payload_is_a_serialization_error(showcase: AdapterServicer) -> None:
    req = pb.ExecuteRequest(tool="add", args=pb.Payload(data=b"{oops", encoding="json"))
    resp = showcase.Execute(req, None)
    assert not resp.ok and resp.error.kind == "serialization"
    req = pb.ExecuteRequest(tool="add", args=pb.Payload(data=b"{}", encoding="pickle"))
    resp = showcase.Execute(req, None)
    assert not resp.ok and resp.error.kind == "serialization"
    assert inflight(showcase) == 0


def test_non_mapping_args_is_a_bad_request(showcase: AdapterServicer) -> None:
    resp = showcase.Execute(request("add", [1, 2]), None)
    assert not resp.ok
    assert resp.error.kind == "bad_request"


def test_generator_tool_called_unary_returns_the_list(showcase: AdapterServicer) -> None:
    value = result_of(showcase.Execute(request("stream_count", {"n": 3}), None))
    assert value == [{"i": 1, "of": 3}, {"i": 2, "of": 3}, {"i": 3, "of": 3}]


# -- initialize / cleanup ------------------------------------------------------------------


class Recording(BaseAdapter):
    calls: list[str] = []

    def initialize(self) -> None:
        self.calls.append("initialize")

    def cleanup(self) -> None:
        self.calls.append("cleanup")

    @tool
    def work(self, x: int = 1) -> dict[str, Any]:
        self.calls.append(f"work:{x}")
        return {"x": x, "md": self.session_context.metadata, "call": self.session_context.call_id}

    @tool
    def boom(self) -> None:
        self.calls.append("boom")
        raise RuntimeError("tool exploded")

    @tool
    def opaque(self) -> Any:
        return {"obj": object()}

    @tool
    def counting(self, n: int = 2) -> Iterator[int]:
        for i in range(n):
            self.calls.append(f"yield:{i}")
            yield i
        return n * 10  # type: ignore[misc]

    @tool
    async def acount(self, n: int = 2) -> Any:
        for i in range(n):
            yield i

    @tool
    def stream_boom(self) -> Iterator[int]:
        yield 1
        raise ValueError("mid-stream")

    def initialize_session(self) -> None:
        self.calls.append(f"init_session:{self.session_context.session_id}")

    def cleanup_session(self) -> None:
        raise RuntimeError("cleanup_session failed")


@pytest.fixture
def recording() -> AdapterServicer:
    Recording.calls = []
    return AdapterServicer(Recording, "w/1", 1)


def test_initialize_tool_cleanup_order(recording: AdapterServicer) -> None:
    req = request("work", {"x": 7}, metadata={"k": "v"})
    assert result_of(recording.Execute(req, None)) == {"x": 7, "md": {"k": "v"}, "call": "c1"}
    assert Recording.calls == ["initialize", "work:7", "cleanup"]


def test_cleanup_runs_when_the_tool_raises(recording: AdapterServicer) -> None:
    resp = recording.Execute(request("boom", {}), None)
    assert not resp.ok
    assert resp.error.type == "RuntimeError"
    assert resp.error.message == "tool exploded"
    assert Recording.calls == ["initialize", "boom", "cleanup"]


def test_new_instance_per_call(recording: AdapterServicer) -> None:
    recording.Execute(request("work", {"x": 1}), None)
    recording.Execute(request("work", {"x": 2}), None)
    assert Recording.calls == ["initialize", "work:1", "cleanup"] * 1 + [
        "initialize",
        "work:2",
        "cleanup",
    ]


def test_unserializable_result_becomes_a_marker(recording: AdapterServicer) -> None:
    value = result_of(recording.Execute(request("opaque", {}), None))
    assert value == {"obj": {"__ffi_unserializable__": True, "__type__": "builtins.object"}}


def test_async_generator_called_unary(recording: AdapterServicer) -> None:
    assert result_of(recording.Execute(request("acount", {"n": 3}), None)) == [0, 1, 2]


def test_session_hooks(recording: AdapterServicer) -> None:
    ok = recording.InitializeSession(pb.SessionRequest(session_id="s9"), None)
    assert ok.ok
    assert Recording.calls == ["init_session:s9"]
    failed = recording.CleanupSession(pb.SessionRequest(session_id="s9"), None)
    assert not failed.ok
    assert failed.error.kind == "session"
    assert failed.error.message == "cleanup_session failed"


def test_missing_session_hooks_are_ok(showcase: AdapterServicer) -> None:
    assert showcase.InitializeSession(pb.SessionRequest(session_id="s"), None).ok
    assert showcase.CleanupSession(pb.SessionRequest(session_id="s"), None).ok


# -- ExecuteStream -------------------------------------------------------------------------


def collect(servicer: AdapterServicer, req: pb.ExecuteRequest) -> list[pb.StreamChunk]:
    return list(servicer.ExecuteStream(req, FakeContext()))


def test_stream_chunks_in_order_then_final(showcase: AdapterServicer) -> None:
    chunks = collect(showcase, request("stream_count", {"n": 4}))
    assert [c.seq for c in chunks] == [1, 2, 3, 4, 5]
    assert [c.is_final for c in chunks] == [False] * 4 + [True]
    assert [json.loads(c.data.data) for c in chunks[:4]] == [{"i": i, "of": 4} for i in range(1, 5)]
    final = json.loads(chunks[-1].result.data)
    assert final["count"] == 4
    assert final["worker_id"] == "w/0"
    assert not chunks[-1].HasField("error")
    assert inflight(showcase) == 0


def test_stream_error_after_chunks(showcase: AdapterServicer) -> None:
    chunks = collect(showcase, request("stream_fail", {"n": 2, "message": "it broke"}))
    assert [c.seq for c in chunks] == [1, 2, 3]
    assert chunks[-1].is_final
    assert chunks[-1].error.kind == "adapter"
    assert chunks[-1].error.type == "RuntimeError"
    assert chunks[-1].error.message == "it broke"
    assert "Traceback" in chunks[-1].error.traceback
    assert inflight(showcase) == 0


def test_stream_unknown_tool(showcase: AdapterServicer) -> None:
    chunks = collect(showcase, request("nope", {}))
    assert len(chunks) == 1
    assert chunks[0].is_final and chunks[0].seq == 1
    assert chunks[0].error.kind == "tool_not_found"
    assert "stream_count" in chunks[0].error.available_tools
    assert inflight(showcase) == 0


def test_stream_of_a_plain_tool_is_its_result_as_one_chunk(showcase: AdapterServicer) -> None:
    chunks = collect(showcase, request("add", {"a": 1, "b": 1}))
    assert [(c.seq, c.is_final) for c in chunks] == [(1, False), (2, True)]
    assert json.loads(chunks[0].data.data) == 2
    assert json.loads(chunks[1].result.data) == 2


def test_stream_return_value_and_cleanup(recording: AdapterServicer) -> None:
    chunks = collect(recording, request("counting", {"n": 2}))
    assert [json.loads(c.data.data) for c in chunks[:-1]] == [0, 1]
    assert json.loads(chunks[-1].result.data) == 20
    assert Recording.calls == ["initialize", "yield:0", "yield:1", "cleanup"]


def test_async_generator_streams(recording: AdapterServicer) -> None:
    chunks = collect(recording, request("acount", {"n": 3}))
    assert [json.loads(c.data.data) for c in chunks[:-1]] == [0, 1, 2]
    assert chunks[-1].is_final


def test_stream_error_runs_cleanup(recording: AdapterServicer) -> None:
    chunks = collect(recording, request("stream_boom", {}))
    assert chunks[-1].error.type == "ValueError"
    assert Recording.calls == ["initialize", "cleanup"]


def test_cancelled_stream_stops_and_cleans_up(recording: AdapterServicer) -> None:
    ctx = FakeContext()
    stream = recording.ExecuteStream(request("counting", {"n": 100}), ctx)
    first = next(stream)
    assert first.seq == 1
    ctx.cancel()  # the caller went away
    rest = list(stream)
    assert rest == []
    assert "yield:5" not in Recording.calls
    assert Recording.calls[-1] == "cleanup"
    assert inflight(recording) == 0


# -- Describe / Heartbeat / Ping -----------------------------------------------------------


def test_describe(showcase: AdapterServicer) -> None:
    resp = showcase.Describe(pb.DescribeRequest(), None)
    assert resp.adapter == "adapters.showcase:ShowcaseAdapter"
    assert resp.worker_id == "w/0"
    assert resp.pid == os.getpid()
    assert resp.capacity == 1
    assert resp.thread_safe is True
    tools = {t.name: t for t in resp.tools}
    assert set(tools) == set(ShowcaseAdapter.tools())
    assert tools["add"].description == "Add two numbers"
    assert [(p.name, p.required) for p in tools["add"].parameters] == [("a", True), ("b", True)]
    assert tools["stream_count"].supports_streaming
    assert not tools["add"].supports_streaming
    assert tools["sleep"].idempotent


def test_heartbeat(showcase: AdapterServicer) -> None:
    resp = showcase.Heartbeat(pb.HeartbeatRequest(seq=42), None)
    assert resp.seq == 42
    assert resp.pid == os.getpid()
    assert resp.rss_bytes > 0
    assert resp.inflight == 0


def test_ping(showcase: AdapterServicer) -> None:
    resp = showcase.Ping(pb.PingRequest(message="hi"), None)
    assert resp.message == "pong"
    assert resp.worker_id == "w/0"
    assert resp.pid == os.getpid()


# -- capacity ------------------------------------------------------------------------------


class Slow(ThreadSafeAdapter):
    active = 0
    peak = 0
    lock = threading.Lock()

    @tool
    def nap(self) -> None:
        with Slow.lock:
            Slow.active += 1
            Slow.peak = max(Slow.peak, Slow.active)
        time.sleep(0.1)
        with Slow.lock:
            Slow.active -= 1


@pytest.mark.parametrize("capacity", [1, 2])
def test_at_most_capacity_calls_run_at_once(capacity: int) -> None:
    Slow.active = Slow.peak = 0
    servicer = AdapterServicer(Slow, "w/0", capacity)
    threads = [
        threading.Thread(target=servicer.Execute, args=(request("nap", {}), None)) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert Slow.peak == capacity
    assert inflight(servicer) == 0


# -- a constructor that raises --------------------------------------------------------------


class BrokenInit(BaseAdapter):
    def __init__(self) -> None:
        raise RuntimeError("constructor failed")

    @tool
    def ping(self) -> str:
        return "pong"


def test_constructor_error_frees_the_slot() -> None:
    servicer = AdapterServicer(BrokenInit, "w/0", 1)
    with contextlib.suppress(RuntimeError):
        servicer.Execute(request("ping", {}), None)
    assert inflight(servicer) == 0
    # With the slot leaked, a second call with capacity 1 would block forever.
    assert servicer._slots.acquire(timeout=0.5)
    servicer._slots.release()


def test_constructor_error_is_an_adapter_error() -> None:
    servicer = AdapterServicer(BrokenInit, "w/0", 1)
    resp = servicer.Execute(request("ping", {}), None)
    assert not resp.ok
    assert resp.error.kind == "adapter"
    assert resp.error.message == "constructor failed"


# -- load_adapter --------------------------------------------------------------------------


def test_load_adapter() -> None:
    assert load_adapter("adapters.showcase:ShowcaseAdapter") is ShowcaseAdapter


def test_load_adapter_missing_module() -> None:
    with pytest.raises(ImportError):
        load_adapter("no_such_module_xyz:X")


def test_load_adapter_missing_class() -> None:
    with pytest.raises(ImportError, match="'Nope'"):
        load_adapter("adapters.showcase:Nope")


@pytest.mark.parametrize(
    "spec", ["collections:OrderedDict", "adapters.showcase:tool", "adapters.showcase:_MEMORY"]
)
def test_load_adapter_not_an_adapter(spec: str) -> None:
    with pytest.raises(TypeError, match="BaseAdapter"):
        load_adapter(spec)
