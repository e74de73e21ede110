"""snakepit_tasks.node.call_stream: a worker's call socket to a real runtime (no Redis)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from snakepit_tasks import errors
from snakepit_tasks._proto import bridge_pb2 as pb
from snakepit_tasks.node.call_stream import CallStream, StreamError
from snakepit_tasks.node.rpc import WorkerCalls, WorkerGone
from snakepit_tasks.node.worker import AdapterWorker, worker_env

SHOWCASE = "adapters.showcase:ShowcaseAdapter"


@pytest.fixture
def run_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="sp-", dir="/tmp")  # short: unix socket paths are limited
    yield path
    shutil.rmtree(path, ignore_errors=True)


def started(run_dir: str, capacity: int = 1) -> AdapterWorker:
    env = worker_env(dict(os.environ), "process" if capacity == 1 else "thread", {})
    worker = AdapterWorker("unit@host/0", 0, SHOWCASE, capacity, run_dir, "run-1", "unit", env)
    worker.spawn()
    worker.wait_ready(20)
    return worker


def request(tool: str, **args: object) -> pb.ExecuteRequest:
    return pb.ExecuteRequest(call_id=f"c-{tool}", tool=tool,
                             args=pb.Payload(data=json.dumps(args).encode(), encoding="json"))


def calls(dead: list[int] | None = None) -> WorkerCalls:
    return WorkerCalls(1 << 20, lambda w, g: (dead if dead is not None else []).append(g),
                       lambda: False)


def test_calls_share_one_stream_opened_at_first_use(run_dir: str) -> None:
    worker = started(run_dir)
    try:
        stream = worker.call_stream()
        assert worker.call_stream() is stream
        for i in range(20):
            assert calls().execute(worker, "add", {"a": i, "b": 1},
                                   deadline=time.time() + 10) == i + 1
        assert worker.call_stream() is stream and not stream.broken
        pong = calls().execute(worker, "ping", {}, deadline=time.time() + 10)
        assert pong["pid"] == worker.pid
    finally:
        worker.stop(1.0)


def test_a_thread_profile_worker_answers_calls_in_the_order_they_finish(run_dir: str) -> None:
    worker = started(run_dir, capacity=2)
    finished: list[str] = []
    try:
        stream = worker.call_stream()

        def slow() -> None:
            stream.call(request("sleep", seconds=1.5), 20.0)
            finished.append("sleep")

        thread = threading.Thread(target=slow)
        thread.start()
        deadline = time.time() + 10
        while worker.stub is not None and time.time() < deadline:  # the sleep has started
            beat = worker.stub.Heartbeat(pb.HeartbeatRequest(seq=1), timeout=5)
            if beat.inflight:
                break
            time.sleep(0.01)
        response = stream.call(request("ping"), 10.0)
        finished.append("ping")
        thread.join(20)
        assert response.ok and finished == ["ping", "sleep"]
    finally:
        worker.stop(1.0)


def test_a_call_past_its_deadline_is_cancelled_and_the_stream_goes_on(run_dir: str) -> None:
    worker = started(run_dir, capacity=2)
    try:
        stream = worker.call_stream()
        with pytest.raises(StreamError) as info:
            stream.call(request("sleep", seconds=3), 0.3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert not stream.broken
        assert stream.call(request("add", a=1, b=2), 10.0).ok
        with pytest.raises(errors.ExecutionTimeout, match="timeout of 0.3 s"):
            calls().execute(worker, "sleep", {"seconds": 3}, deadline=time.time() + 0.3,
                            timeout=0.3)
        assert worker.state == "ready"  # a thread-profile worker is not replaced
    finally:
        worker.stop(1.0)


def test_a_process_profile_call_past_its_deadline_replaces_the_worker(run_dir: str) -> None:
    worker = started(run_dir)
    dead: list[int] = []
    try:
        with pytest.raises(errors.ExecutionTimeout, match="was killed and is being restarted"):
            calls(dead).execute(worker, "sleep", {"seconds": 5}, deadline=time.time() + 0.3,
                                timeout=0.3)
        assert dead == [1]
        status = worker.exit_status(wait=5)
        assert status is not None and status.signal == "SIGKILL"
    finally:
        worker.stop(1.0)


def test_a_crash_fails_the_waiting_call_and_the_next_worker_gets_a_new_stream(
    run_dir: str,
) -> None:
    worker = started(run_dir)
    try:
        first = worker.call_stream()
        with pytest.raises(errors.WorkerCrashed, match="exited with code 3") as info:
            calls().execute(worker, "crash", {"code": 3}, deadline=time.time() + 10)
        assert info.value.details["exit_code"] == 3
        assert first.broken
        with pytest.raises(StreamError):  # a broken stream fails at once
            first.call(request("ping"), 5.0)
        worker.kill()  # as the node's supervisor does before it restarts a worker
        worker.spawn()
        worker.wait_ready(20)
        assert worker.call_stream() is not first
        pong = calls().execute(worker, "ping", {}, deadline=time.time() + 10)
        assert pong["pid"] == worker.pid
    finally:
        worker.stop(1.0)


def test_calls_waiting_on_a_thread_profile_worker_all_fail_when_it_dies(run_dir: str) -> None:
    worker = started(run_dir, capacity=3)
    failures: list[BaseException] = []
    try:
        def waiting() -> None:
            try:
                calls().execute(worker, "sleep", {"seconds": 30}, deadline=time.time() + 60)
            except BaseException as exc:  # noqa: BLE001 - what the test checks
                failures.append(exc)

        threads = [threading.Thread(target=waiting) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.time() + 10
        while worker.stub is not None and time.time() < deadline:
            if worker.stub.Heartbeat(pb.HeartbeatRequest(seq=1), timeout=5).inflight == 2:
                break
            time.sleep(0.01)
        assert worker.process is not None
        worker.process.kill()
        for t in threads:
            t.join(20)
        assert len(failures) == 2
        assert all(isinstance(f, errors.WorkerCrashed) for f in failures), failures
        assert all(f.details.get("signal") == "SIGKILL" for f in failures)  # type: ignore[attr-defined]
    finally:
        worker.stop(1.0)


def test_a_call_to_a_dead_runtime_is_never_sent(run_dir: str) -> None:
    """A worker whose process is gone before the call: WorkerGone (nothing ran)."""
    worker = started(run_dir)
    dead: list[int] = []
    try:
        assert worker.process is not None
        worker.process.kill()
        worker.process.wait(5)
        with pytest.raises(WorkerGone):
            calls(dead).execute(worker, "ping", {}, deadline=time.time() + 10)
        assert dead == [1]
    finally:
        worker.stop(1.0)


def test_the_call_socket_is_the_nodes_path_and_the_grpc_stream_still_answers(
    run_dir: str,
) -> None:
    """Calls travel on the runtime's call socket (c<index>.sock); the same frames on the
    gRPC ``Calls`` stream are answered too (for gRPC-only clients); a graceful stop removes
    the call socket."""
    worker = started(run_dir)
    try:
        assert os.path.exists(worker.calls_path) and worker.calls_path.endswith("c0.sock")
        assert worker.call_stream().call(request("add", a=2, b=3), 10.0).ok
        assert worker.stub is not None
        frame = pb.CallFrame(id=5, execute=request("add", a=4, b=5), deadline=time.time() + 10)
        [reply] = list(worker.stub.Calls(iter([frame]), timeout=10))
        assert reply.id == 5 and json.loads(reply.response.result.data) == 9
    finally:
        worker.stop(1.0)
    assert not os.path.exists(worker.calls_path)


@pytest.mark.parametrize("capacity", [1, 3])
def test_a_runtime_that_speaks_no_frames_breaks_the_stream_not_the_node(
    run_dir: str, capacity: int,
) -> None:
    """Garbage on the call socket (not a reply) fails the waiting call as UNAVAILABLE, in
    lock-step (capacity 1) and multiplexed (the reader thread) alike."""
    path = os.path.join(run_dir, "c9.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def answer_garbage() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"\x00\x00\x00\x04\xff\xff\xff\xff")
            connection.recv(1)  # until the node drops it

    thread = threading.Thread(target=answer_garbage)
    thread.start()
    try:
        stream = CallStream(path, "garbage", capacity)
        with pytest.raises(StreamError) as info:
            stream.call(request("ping"), 5.0)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and stream.broken
    finally:
        thread.join(10)
        listener.close()


def test_a_missing_call_socket_fails_as_never_sent(run_dir: str) -> None:
    with pytest.raises(StreamError, match="failed to connect") as info:
        CallStream(os.path.join(run_dir, "c8.sock"), "absent")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def chunks_of(worker: AdapterWorker, on_chunk: list[int], cancelled: threading.Event,
              tool: str, timeout: float = 20.0, **args: object) -> object:
    return calls().stream(worker, tool, args, deadline=time.time() + timeout,
                          on_chunk=lambda seq, data: on_chunk.append(seq), cancelled=cancelled,
                          timeout=timeout)


def test_a_stream_has_a_connection_of_its_own_and_ends_with_its_result(run_dir: str) -> None:
    worker = started(run_dir)
    seen: list[int] = []
    try:
        calls_before = worker.call_stream()
        result = chunks_of(worker, seen, threading.Event(), "stream_count", n=50)
        assert seen == list(range(1, 51))
        assert isinstance(result, dict) and result["count"] == 50
        assert worker.call_stream() is calls_before and not calls_before.broken
        stream = worker.open_stream(request("stream_count", n=3), 10.0)
        got = list(stream)
        assert [c.seq for c in got] == [1, 2, 3, 4] and got[-1].is_final
        assert not stream.is_active()
    finally:
        worker.stop(1.0)


@pytest.mark.parametrize("capacity", [1, 2])
def test_a_cancelled_stream_stops_its_tool_and_frees_the_worker(
    run_dir: str, capacity: int,
) -> None:
    worker = started(run_dir, capacity)
    seen: list[int] = []
    cancelled = threading.Event()
    try:
        def cancel_soon() -> None:
            deadline = time.time() + 10
            while len(seen) < 3 and time.time() < deadline:
                time.sleep(0.01)
            cancelled.set()

        threading.Thread(target=cancel_soon).start()
        result = chunks_of(worker, seen, cancelled, "stream_count", n=10_000, delay=0.02)
        assert result == {"halted": True, "chunks": len(seen)} and 3 <= len(seen) < 10_000
        # the tool stops at its next chunk: its slot is free, and nothing runs
        pong = calls().execute(worker, "ping", {}, deadline=time.time() + 10)
        assert pong["pid"] == worker.pid
        assert worker.stub is not None
        deadline = time.time() + 10
        while worker.stub.Heartbeat(pb.HeartbeatRequest(seq=1), timeout=5).inflight:
            assert time.time() < deadline, "the cancelled stream's tool still runs"
            time.sleep(0.02)
    finally:
        worker.stop(1.0)


def test_a_stream_past_its_deadline_replaces_a_process_profile_worker(run_dir: str) -> None:
    worker = started(run_dir)
    dead: list[int] = []
    try:
        with pytest.raises(errors.ExecutionTimeout, match="was killed and is being restarted"):
            calls(dead).stream(worker, "stream_count", {"n": 1000, "delay": 0.05},
                               deadline=time.time() + 0.5, on_chunk=lambda s, d: None,
                               cancelled=threading.Event(), timeout=0.5)
        assert dead == [1]
    finally:
        worker.stop(1.0)
