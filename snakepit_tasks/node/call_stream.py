"""The node's side of a worker's ``Calls``: one long-lived connection to the runtime's call
socket per runtime process, every ``Execute`` of the worker on it, multiplexed by id.

Frames are ``CallFrame`` out, ``CallReply`` in (``bridge/frames.py``). A worker of capacity
1 runs one call at a time: the caller's thread writes its frame and reads its own reply (no
hand-off between threads). A worker of higher capacity runs several: one reader thread per
connection owns the replies and hands each to the thread waiting on its id. A call whose
time runs out fails with ``DEADLINE_EXCEEDED`` (a concurrent worker is sent a ``cancel``
frame and the connection goes on; a capacity-1 worker's connection is dropped, and the node
replaces that worker); a connection that breaks (the runtime died) fails every call waiting
on it with ``UNAVAILABLE``, so :mod:`.rpc` maps both exactly as it maps a failed unary gRPC
call. A runtime that cannot be reached fails the call with ``UNAVAILABLE: failed to
connect``: nothing was sent.

A streamed call (:class:`ChunkStream`) has a connection of its own: one ``stream`` frame out,
the call's ``StreamChunk`` frames back until the final one; closing it stops the stream.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from queue import Empty, SimpleQueue

import grpc
from google.protobuf.message import DecodeError

from .._proto import bridge_pb2 as pb
from ..bridge import frames


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

_ENDED = "the runtime ended the stream"


def _timed_out() -> StreamError:
    return StreamError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


def _connect(path: str) -> socket.socket:
    """A connection to the call socket at ``path``; StreamError (UNAVAILABLE, nothing sent)
    when it cannot be made."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise StreamError(grpc.StatusCode.UNAVAILABLE,
                          f"failed to connect to {path}: {exc.strerror or exc}") from None
    return sock


class CallStream:
    """One open connection to a runtime's call socket. Thread-safe: calls may run
    concurrently (on a worker of capacity > 1, at once)."""

    def __init__(self, path: str, name: str, capacity: int = 1) -> None:
        self._sock = _connect(path)
        self._reader = frames.FrameReader(self._sock)
        self._lock = threading.Lock()  # the connection's state; a lock-step call holds it
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._broken: StreamError | None = None
        self._lockstep = capacity == 1
        self._waiting: dict[int, SimpleQueue[_Outcome]] = {}
        if not self._lockstep:
            threading.Thread(target=self._read, name=f"calls-{name}", daemon=True).start()

    @property
    def broken(self) -> bool:
        """Whether the connection has ended (a new call needs a new one)."""
        return self._broken is not None

    def call(
        self, request: pb.ExecuteRequest, timeout: float,
        metadata: list[tuple[str, str]] | None = None,
    ) -> pb.ExecuteResponse:
        """Run ``request`` on the runtime; its response within ``timeout`` seconds. Raises
        StreamError (DEADLINE_EXCEEDED, or UNAVAILABLE when the connection broke)."""
        frame = pb.CallFrame(execute=request, deadline=time.time() + timeout)
        if metadata:
            frame.metadata.update(metadata)
        if self._lockstep:
            return self._call_in_turn(frame, timeout)
        return self._call_multiplexed(frame, timeout)

    def close(self) -> None:
        """End the connection; calls still waiting fail with UNAVAILABLE."""
        self._break(StreamError(grpc.StatusCode.UNAVAILABLE, "the node closed the stream"))

    def _call_in_turn(self, frame: pb.CallFrame, timeout: float) -> pb.ExecuteResponse:
        """One call at a time: write the frame, read the reply on this thread."""
        with self._lock:
            if self._broken is not None:
                raise self._broken
            frame.id = call_id = next(self._ids)
            try:
                self._sock.settimeout(timeout)
                frames.send(self._sock, frame)
                while True:
                    reply = pb.CallReply.FromString(self._reader.read())
                    if reply.id == call_id:
                        return reply.response
            except TimeoutError:
                failure = _timed_out()
                broken = StreamError(grpc.StatusCode.UNAVAILABLE,
                                     "a call timed out on the stream: its reply is still due")
            except (OSError, EOFError, frames.FrameError, DecodeError):
                failure = broken = StreamError(grpc.StatusCode.UNAVAILABLE, _ENDED)
        self._break(broken)
        raise failure

    def _call_multiplexed(self, frame: pb.CallFrame, timeout: float) -> pb.ExecuteResponse:
        """Several calls at once: write the frame, wait for the reader to hand the reply."""
        answer: SimpleQueue[_Outcome] = SimpleQueue()
        with self._lock:
            if self._broken is not None:
                raise self._broken
            frame.id = call_id = next(self._ids)
            self._waiting[call_id] = answer
        self._send(frame)
        try:
            outcome = answer.get(timeout=timeout)
        except Empty:
            with self._lock:
                gave_up = self._waiting.pop(call_id, None) is not None
            if gave_up:
                self._send(pb.CallFrame(id=call_id, cancel=True))
                raise _timed_out() from None
            outcome = answer.get()  # the reader took it just now: its outcome is on its way
        if isinstance(outcome, StreamError):
            raise outcome
        return outcome

    def _send(self, frame: pb.CallFrame) -> None:
        """Write a frame; a failed write breaks the connection (its waiters learn it)."""
        try:
            with self._send_lock:
                frames.send(self._sock, frame)
        except OSError:
            self._break(StreamError(grpc.StatusCode.UNAVAILABLE, _ENDED))

    def _read(self) -> None:
        for data in self._reader.frames():
            try:
                reply = pb.CallReply.FromString(data)
            except DecodeError:  # not a reply: nothing more on it can be trusted
                break
            with self._lock:
                answer = self._waiting.pop(reply.id, None)
            if answer is not None:
                answer.put(reply.response)
        self._break(StreamError(grpc.StatusCode.UNAVAILABLE, _ENDED))
        self._sock.close()  # this thread was its last reader

    def _break(self, broken: StreamError) -> None:
        """Mark the connection ended (the first reason stays), shut it, fail its waiters."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the thread reading it
        with self._lock:  # a lock-step call in flight ends first (the shutdown ended its read)
            if self._broken is None:
                self._broken = broken
            waiting, self._waiting = self._waiting, {}
            if self._lockstep:
                self._sock.close()  # nobody reads it now
        for answer in waiting.values():
            answer.put(self._broken)


class ChunkStream:
    """One streamed call on a connection of its own: iterate it for the call's chunks (the
    last one ``is_final``). Like a gRPC server stream: ``cancel()`` (from any thread) stops
    it, ``is_active()`` says whether it still runs; iterating raises StreamError
    (DEADLINE_EXCEEDED past ``timeout`` seconds, UNAVAILABLE when the connection broke or
    was cancelled)."""

    def __init__(
        self, path: str, request: pb.ExecuteRequest, timeout: float,
        metadata: list[tuple[str, str]] | None = None,
    ) -> None:
        self._deadline = time.time() + timeout
        frame = pb.CallFrame(id=1, stream=request, deadline=self._deadline)
        if metadata:
            frame.metadata.update(metadata)
        self._sock = _connect(path)
        self._reader = frames.FrameReader(self._sock)
        self._active = True
        try:
            frames.send(self._sock, frame)
        except OSError:
            self._end()
            raise StreamError(grpc.StatusCode.UNAVAILABLE, _ENDED) from None

    def __iter__(self) -> ChunkStream:
        return self

    def __next__(self) -> pb.StreamChunk:
        if not self._active:
            raise StopIteration
        try:
            self._sock.settimeout(max(0.001, self._deadline - time.time()))
            chunk = pb.StreamChunk.FromString(self._reader.read())
        except TimeoutError:
            self._end()
            raise _timed_out() from None
        except (OSError, EOFError, frames.FrameError, DecodeError):
            self._end()
            raise StreamError(grpc.StatusCode.UNAVAILABLE, _ENDED) from None
        if chunk.is_final:
            self._end()
        return chunk

    def is_active(self) -> bool:
        return self._active

    def cancel(self) -> None:
        """Stop the stream: the runtime stops the tool at its next chunk."""
        self._active = False
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the thread reading it

    def close(self) -> None:
        """Let the connection go (by the thread that iterates it, once done with it)."""
        self._end()

    def _end(self) -> None:
        self._active = False
        self._sock.close()
