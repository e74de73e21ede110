"""The runtime's side of a worker's ``Calls``: every call its node sends, multiplexed by id.

The node keeps one connection open per worker to the runtime's call socket (see
``node/call_stream.py``): ``CallFrame`` messages in, ``CallReply`` messages out, as
length-prefixed frames (``frames.py``). The same frames also travel on the gRPC ``Calls``
stream, kept for comparison (the bench) and for tools that speak gRPC only. A worker of
capacity 1 runs each call on the connection's own thread, in turn. A worker of higher
capacity has one thread read the node's frames; each ``execute`` frame runs on a thread pool
(the servicer's slots still allow ``capacity`` tools at once), and its reply goes back
through a queue the writer drains. A ``cancel`` frame (the node gave up: deadline) drops the
call's reply, and the call if it has not started. Heartbeats stay a unary RPC: they must be
answered while a capacity-1 worker's call runs.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent import futures
from queue import SimpleQueue
from typing import Any

from google.protobuf.message import DecodeError

from .._proto import bridge_pb2 as pb
from . import frames as framing
from .limits import MAX_MESSAGE_BYTES

#: What a reply may add to its ExecuteResponse (the frame around it).
_FRAME_ROOM = 1024


class FrameContext:
    """What a unary RPC's context tells a call, for a call that came on the stream: its
    metadata (the trace context) and its time left."""

    def __init__(self, frame: pb.CallFrame) -> None:
        self._frame = frame  # its metadata is read only when asked (tracing on)
        self.deadline = frame.deadline if frame.deadline > 0 else None

    def add_callback(self, callback: Callable[[], Any]) -> bool:
        """A streamed call's RPC would run ``callback`` when it ends; on a socket, the end is
        the connection's (a write fails), seen by the writer: nothing to register."""
        return False

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(self._frame.metadata.items())

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.time())


Execute = Callable[[pb.ExecuteRequest, Any], pb.ExecuteResponse]
ExecuteStream = Callable[[pb.ExecuteRequest, Any], Generator[pb.StreamChunk, None, None]]


def serve_calls(
    execute: Execute, frames: Iterator[pb.CallFrame], context: Any, capacity: int
) -> Generator[pb.CallReply, None, None]:
    """The replies to one stream of frames (a ``Calls`` RPC or a call-socket connection):
    ``execute(request, context)`` for each call the node sends, up to ``capacity`` at once;
    replies in the order calls finish. ``context``: the RPC's (its end ends the replies), or
    None on a socket (the end of the frames ends them)."""
    if capacity == 1:
        return _one_at_a_time(execute, frames)
    return _concurrent(execute, frames, context, capacity + 1)


def _one_at_a_time(
    execute: Execute, frames: Iterator[pb.CallFrame]
) -> Generator[pb.CallReply, None, None]:
    """A worker of capacity 1 (the process profile): each call runs on the stream's own
    thread, read, run and answered in turn (no hand-off between threads). Its node never
    sends a second call before the first is answered (it kills the worker when one times
    out), so a cancel frame only ever concerns a call already answered."""
    for frame in frames:
        if frame.WhichOneof("kind") != "execute":
            continue
        context = FrameContext(frame)
        if context.deadline is not None and context.deadline <= time.time():
            continue  # its node gave up on it already
        yield pb.CallReply(id=frame.id, response=_fitting(execute(frame.execute, context)))


def _concurrent(
    execute: Execute, frames: Iterator[pb.CallFrame], context: Any, workers: int
) -> Generator[pb.CallReply, None, None]:
    """A worker that runs several calls at once (the thread profile): a reader thread takes
    the frames, each call runs on one of ``workers`` threads, replies go through a queue."""
    replies: SimpleQueue[pb.CallReply | None] = SimpleQueue()
    if context is not None:
        context.add_callback(lambda: replies.put(None))  # the node went away, or the RPC ended
    pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="call")
    calls = _Calls(execute, replies)
    reader = threading.Thread(target=calls.read, args=(frames, pool), name="calls-reader",
                              daemon=True)
    reader.start()
    try:
        while (reply := replies.get()) is not None:
            yield reply
    finally:
        calls.closed = True
        pool.shutdown(wait=False, cancel_futures=True)


class CallServer:
    """The runtime's call socket: a listening unix socket; each connection (its node's, one
    per worker) is served on a thread of its own by :func:`serve_calls`. A connection whose
    first frame is a ``stream`` call carries that call's chunks back, then closes: the node
    opens one per streamed call, and closes it to stop the stream."""

    def __init__(
        self, path: str, execute: Execute, capacity: int,
        execute_stream: ExecuteStream | None = None,
    ) -> None:
        self.path = path
        self._execute = execute
        self._execute_stream = execute_stream
        self._capacity = capacity
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # only this user may connect
        try:
            self._listener.bind(path)
        finally:
            os.umask(old_umask)
        self._listener.listen(8)
        threading.Thread(target=self._accept, name="calls-accept", daemon=True).start()

    def close(self) -> None:
        """Stop accepting, end every connection (calls in flight lose their replies), and
        remove the socket file."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._listener.close()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                self._connections.add(connection)
            threading.Thread(target=self._serve, args=(connection,), name="calls",
                             daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        reader = framing.FrameReader(connection)
        frames = (pb.CallFrame.FromString(data) for data in reader.frames())
        try:
            first = next(frames, None)
            if first is None:
                return
            if first.WhichOneof("kind") == "stream" and self._execute_stream is not None:
                replies: Generator[Any, None, None] = self._execute_stream(
                    first.stream, FrameContext(first))
            else:
                replies = serve_calls(self._execute, itertools.chain([first], frames), None,
                                      self._capacity)
            with contextlib.closing(replies):  # a write that fails stops the tool too
                for reply in replies:
                    framing.send(connection, reply)
        except (OSError, DecodeError):
            pass  # the node went away (or spoke no frames): nobody is left to answer
        finally:
            with self._lock:
                self._connections.discard(connection)
            connection.close()


class _Calls:
    """The calls in flight on one stream."""

    def __init__(self, execute: Execute, replies: SimpleQueue[pb.CallReply | None]) -> None:
        self._execute = execute
        self._replies = replies
        self._lock = threading.Lock()
        self._running: set[int] = set()
        self._cancelled: set[int] = set()
        self.closed = False

    def read(self, frames: Iterator[pb.CallFrame], pool: futures.ThreadPoolExecutor) -> None:
        """Take the node's frames until it closes the stream (or the RPC ends)."""
        try:
            for frame in frames:
                if frame.WhichOneof("kind") == "cancel":
                    with self._lock:
                        if frame.id in self._running:
                            self._cancelled.add(frame.id)
                    continue
                with self._lock:
                    self._running.add(frame.id)
                pool.submit(self._run, frame)
        except Exception:  # noqa: BLE001 - the RPC ended (cancelled, node gone): nothing to do
            pass
        finally:
            self._replies.put(None)

    def _run(self, frame: pb.CallFrame) -> None:
        context = FrameContext(frame)
        try:
            if self._dropped(frame.id) or self.closed:
                return
            response = _fitting(self._execute(frame.execute, context))
            if not self._dropped(frame.id):
                self._replies.put(pb.CallReply(id=frame.id, response=response))
        finally:
            with self._lock:
                self._running.discard(frame.id)
                self._cancelled.discard(frame.id)

    def _dropped(self, call: int) -> bool:
        with self._lock:
            return call in self._cancelled


def _fitting(response: pb.ExecuteResponse) -> pb.ExecuteResponse:
    """``response``, or an error in its place when no gRPC message can carry it (sent, it
    would break the whole stream and every call on it)."""
    size = response.ByteSize()
    if size <= MAX_MESSAGE_BYTES - _FRAME_ROOM:
        return response
    return pb.ExecuteResponse(ok=False, error=pb.ErrorInfo(
        kind="serialization", type="SerializationError",
        message=f"the result is {size} bytes, over the {MAX_MESSAGE_BYTES}-byte gRPC message "
                "limit; return large data through the zero-copy path"))
