"""The node's side of a worker's ``Calls`` stream: one long-lived bidirectional gRPC stream
per runtime process, every ``Execute`` of the worker multiplexed on it by id.

A caller's thread puts its frame on the stream and waits for its reply; one reader thread per
stream owns the replies and hands each to the thread waiting on its id. A call whose time runs
out sends a ``cancel`` frame and fails with ``DEADLINE_EXCEEDED``; a stream that breaks (the
runtime died, its channel was closed) fails every call waiting on it with the stream's status,
so :mod:`.rpc` maps both exactly as it maps a failed unary call.
"""

from __future__ import annotations

import itertools
import threading
import time
from queue import Empty, SimpleQueue
from typing import Any

import grpc

from .._proto import bridge_pb2 as pb
from .._proto import bridge_pb2_grpc as pb_grpc


class StreamError(grpc.RpcError):
    """A call on the stream failed as a unary RPC would have: ``code()`` and ``details()``."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


_Outcome = pb.ExecuteResponse | StreamError


class CallStream:
    """One open ``Calls`` stream to a runtime. Thread-safe: calls may run concurrently."""

    def __init__(self, stub: pb_grpc.AdapterRuntimeStub, name: str) -> None:
        self._frames: SimpleQueue[pb.CallFrame | None] = SimpleQueue()
        self._waiting: dict[int, SimpleQueue[_Outcome]] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._broken: StreamError | None = None
        self._replies: Any = stub.Calls(iter(self._frames.get, None))
        self._reader = threading.Thread(target=self._read, name=f"calls-{name}", daemon=True)
        self._reader.start()

    @property
    def broken(self) -> bool:
        """Whether the stream has ended (a new call needs a new stream)."""
        return self._broken is not None

    def call(
        self, request: pb.ExecuteRequest, timeout: float,
        metadata: list[tuple[str, str]] | None = None,
    ) -> pb.ExecuteResponse:
        """Run ``request`` on the runtime; its response within ``timeout`` seconds. Raises
        StreamError (DEADLINE_EXCEEDED, or the status the stream broke with)."""
        answer: SimpleQueue[_Outcome] = SimpleQueue()
        deadline = time.time() + timeout
        with self._lock:
            if self._broken is not None:
                raise self._broken
            call_id = next(self._ids)
            self._waiting[call_id] = answer
        frame = pb.CallFrame(id=call_id, execute=request, deadline=deadline)
        if metadata:
            frame.metadata.update(metadata)
        self._frames.put(frame)
        try:
            outcome = answer.get(timeout=timeout)
        except Empty:
            with self._lock:
                gave_up = self._waiting.pop(call_id, None) is not None
            if gave_up:
                self._frames.put(pb.CallFrame(id=call_id, cancel=True))
                raise StreamError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
            outcome = answer.get()  # the reader took it just now: its outcome is on its way
        if isinstance(outcome, StreamError):
            raise outcome
        return outcome

    def close(self) -> None:
        """End the stream; calls still waiting fail with CANCELLED."""
        self._frames.put(None)
        self._replies.cancel()

    def _read(self) -> None:
        try:
            for reply in self._replies:
                with self._lock:
                    answer = self._waiting.pop(reply.id, None)
                if answer is not None:
                    answer.put(reply.response)
            broken = StreamError(grpc.StatusCode.UNAVAILABLE, "the runtime ended the stream")
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            broken = StreamError(code or grpc.StatusCode.UNKNOWN, str(details or exc))
        with self._lock:
            self._broken = broken
            waiting, self._waiting = self._waiting, {}
        self._frames.put(None)  # ends gRPC's consumption of our frames
        for answer in waiting.values():
            answer.put(broken)
