"""Node ↔ runtime: a unary gRPC call per request against one long-lived bidirectional stream
per worker (calls multiplexed by id), both served by the real adapter servicer.

``python -m bench.grpc_mux --socket PATH [--adapter SPEC]`` is the server: the runtime's own
``AdapterServicer`` (a fresh adapter instance per call, its slot, tracing and telemetry
wrappers) and gRPC server options, over a unix socket like a node's runtimes, with one
extra bench-only method, ``/snakepit.bench.Mux/ExecuteMany``: a bidi stream whose every
``ExecuteRequest`` is answered by ``AdapterServicer.Execute`` on the same stream, the reply
framed with its ``call_id``. The production protocol is not changed.

:class:`MuxRuntime` starts it and offers three targets, timed side by side:

- unary ``Execute("ping")`` (what a node does today);
- bidi, multiplexed: the caller puts the request on the open stream and waits for its id's
  reply, which a reader thread hands over (what a node would do: heartbeats, cancellation
  and concurrent calls share the stream, so one reader owns it);
- bidi, lock-step: the caller reads the next reply itself (no reader thread; the floor of a
  stream, possible only with one call at a time and nothing else on the stream).
"""

from __future__ import annotations

import argparse
import itertools
import os
import queue
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

from snakepit_tasks._proto import bridge_pb2 as pb
from snakepit_tasks._proto import bridge_pb2_grpc as pb_grpc
from snakepit_tasks.bridge.limits import MAX_MESSAGE_BYTES

from .procs import BenchError, Child, Processes
from .systems import ADAPTER, Target, _child_env

METHOD = "/snakepit.bench.Mux/ExecuteMany"
_LEN = struct.Struct("!H")


def _frame(item: tuple[str, pb.ExecuteResponse]) -> bytes:
    call_id, response = item
    raw_id = call_id.encode()
    return _LEN.pack(len(raw_id)) + raw_id + response.SerializeToString()


def _unframe(data: bytes) -> tuple[str, pb.ExecuteResponse]:
    (n,) = _LEN.unpack_from(data)
    return data[2 : 2 + n].decode(), pb.ExecuteResponse.FromString(data[2 + n :])


# -- the server (a subprocess) ---------------------------------------------------------------
def serve(socket_path: str, adapter: str) -> int:
    from snakepit_tasks.bridge.runtime import AdapterServicer, load_adapter

    servicer = AdapterServicer(load_adapter(adapter), "bench-mux/0", 1)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=1 + 4, thread_name_prefix="tool"),
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    pb_grpc.add_AdapterRuntimeServicer_to_server(servicer, server)

    def execute_many(
        requests: Iterator[pb.ExecuteRequest], context: Any
    ) -> Iterator[tuple[str, pb.ExecuteResponse]]:
        for request in requests:
            yield request.call_id, servicer.Execute(request, context)

    handler = grpc.method_handlers_generic_handler(
        "snakepit.bench.Mux",
        {
            "ExecuteMany": grpc.stream_stream_rpc_method_handler(
                execute_many,
                request_deserializer=pb.ExecuteRequest.FromString,
                response_serializer=_frame,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    stop.wait()
    server.stop(grace=0.5).wait(1.0)
    return 0


# -- the client side (the bench process, standing where the node is) --------------------------
class _Stream:
    """One open ``ExecuteMany`` stream; requests go through a queue the gRPC consumes."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._requests: queue.SimpleQueue[pb.ExecuteRequest | None] = queue.SimpleQueue()
        method = channel.stream_stream(
            METHOD,
            request_serializer=pb.ExecuteRequest.SerializeToString,
            response_deserializer=_unframe,
        )
        self.replies = method(iter(self._requests.get, None))

    def send(self, request: pb.ExecuteRequest) -> None:
        self._requests.put(request)

    def close(self) -> None:
        self._requests.put(None)
        self.replies.cancel()


class MuxClient:
    """Calls multiplexed by id on one stream: a reader thread hands each reply to its caller."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stream = _Stream(channel)
        self._waiting: dict[str, list[Any]] = {}
        self._ids = itertools.count()
        self._reader = threading.Thread(target=self._read, name="bench-mux-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for call_id, response in self._stream.replies:
                slot = self._waiting.pop(call_id, None)
                if slot is not None:
                    slot[1] = response
                    slot[0].set()
        except grpc.RpcError:
            pass  # cancelled at close

    def execute(self, tool: str, args: bytes = b"{}", timeout: float = 10.0) -> pb.ExecuteResponse:
        call_id = f"m{next(self._ids)}"
        slot: list[Any] = [threading.Event(), None]
        self._waiting[call_id] = slot
        self._stream.send(
            pb.ExecuteRequest(call_id=call_id, tool=tool,
                              args=pb.Payload(data=args, encoding="json"))
        )
        if not slot[0].wait(timeout):
            self._waiting.pop(call_id, None)
            raise BenchError(f"no reply to {call_id} on the bidi stream within {timeout} s")
        return slot[1]

    def close(self) -> None:
        self._stream.close()
        self._reader.join(2)


class LockStepClient:
    """One call at a time on one stream, the caller reading the next reply itself."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stream = _Stream(channel)
        self._ids = itertools.count()

    def execute(self, tool: str, args: bytes = b"{}") -> pb.ExecuteResponse:
        call_id = f"l{next(self._ids)}"
        self._stream.send(
            pb.ExecuteRequest(call_id=call_id, tool=tool,
                              args=pb.Payload(data=args, encoding="json"))
        )
        got, response = next(self._stream.replies)
        if got != call_id:
            raise BenchError(f"lock-step stream answered {got}, expected {call_id}")
        return response

    def close(self) -> None:
        self._stream.close()


class MuxRuntime:
    """The bench server process, a channel to it, and the three clients."""

    def __init__(self, procs: Processes, adapter: str = ADAPTER) -> None:
        self.procs = procs
        self.adapter = adapter
        self.dir = tempfile.mkdtemp(prefix="spb-mux-")
        self.socket = os.path.join(self.dir, "mux.sock")
        self.child: Child | None = None
        self.channel: grpc.Channel | None = None
        self._clients: list[Any] = []

    def start(self, timeout: float = 30.0) -> MuxRuntime:
        cmd = [sys.executable, "-m", "bench.grpc_mux", "--socket", self.socket,
               "--adapter", self.adapter]
        self.child = self.procs.start("grpc-mux", cmd, _child_env())
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket):
            if self.child.process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the gRPC mux server did not start:\n{self.child.log_tail()}")
            time.sleep(0.02)
        self.channel = grpc.insecure_channel(
            f"unix:{self.socket}",
            options=[
                ("grpc.enable_http_proxy", 0),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        grpc.channel_ready_future(self.channel).result(timeout=timeout)
        return self

    def targets(self) -> list[Target]:
        assert self.channel is not None
        stub = pb_grpc.AdapterRuntimeStub(self.channel)
        request = pb.ExecuteRequest(call_id="bench", tool="ping",
                                    args=pb.Payload(data=b"{}", encoding="json"))
        mux, lock_step = MuxClient(self.channel), LockStepClient(self.channel)
        self._clients += [mux, lock_step]

        def check(response: pb.ExecuteResponse, what: str) -> pb.ExecuteResponse:
            if not response.ok:
                raise BenchError(f"{what} failed: {response.error}")
            return response

        return [
            Target("mux_unary", "node↔runtime: unary Execute per call",
                   lambda: check(stub.Execute(request, timeout=10), "unary Execute")),
            Target("mux_bidi", "node↔runtime: one bidi stream, multiplexed by id",
                   lambda: check(mux.execute("ping"), "bidi ExecuteMany")),
            Target("mux_lockstep", "node↔runtime: one bidi stream, lock-step",
                   lambda: check(lock_step.execute("ping"), "lock-step ExecuteMany")),
        ]

    def stop(self) -> None:
        for client in self._clients:
            try:
                client.close()
            except Exception as exc:  # keep closing
                print(f"bench: closing a mux client: {exc!r}", file=sys.stderr)
        self._clients.clear()
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.child is not None:
            self.procs.stop(self.child)
            self.child = None
        shutil.rmtree(self.dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.grpc_mux", description=__doc__.split("\n")[0])
    p.add_argument("--socket", required=True)
    p.add_argument("--adapter", default=ADAPTER)
    args = p.parse_args(argv)
    return serve(args.socket, args.adapter)


if __name__ == "__main__":
    sys.exit(main())
