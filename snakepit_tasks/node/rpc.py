"""Handing a call to one adapter worker over gRPC, and what its failures mean to the caller."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from .. import serialization, telemetry
from .._proto import bridge_pb2 as pb
from ..errors import (
    AdapterError,
    ExecutionTimeout,
    SerializationError,
    SnakepitError,
    ToolNotFound,
    WorkerCrashed,
    from_wire,
)
from ..telemetry import tracing
from .adapter_events import reemit
from .worker import AdapterWorker, process_ended

log = logging.getLogger("snakepit_tasks.grpc")

# gRPC details when the call never reached the runtime (its socket was gone).
_NOT_SENT_MARKERS = ("failed to connect", "connection refused", "no such file")


class WorkerGone(Exception):  # noqa: N818 - control flow inside the node
    """The worker's process had ended before the call reached it: nothing ran, so the call
    can go to another worker whatever the tool."""

    def __init__(self, worker_id: str) -> None:
        super().__init__(worker_id)
        self.worker_id = worker_id


class WorkerCalls:
    """Runs calls on adapter workers. ``mark_dead(worker, generation)`` stops a worker found
    gone from being handed out; ``stopping()`` says whether the node is shutting down."""

    def __init__(
        self,
        stream_max_chunk_bytes: int,
        mark_dead: Callable[[AdapterWorker, int], None],
        stopping: Callable[[], bool],
        max_result_bytes: int = 64 * 1024 * 1024,
        relay: Callable[[Any], Any] | None = None,
    ) -> None:
        self.stream_max_chunk_bytes = stream_max_chunk_bytes
        self.max_result_bytes = max_result_bytes
        self.relay = relay  # rewrites zero-copy handles in results (see node/zero_copy.py)
        self._mark_dead = mark_dead
        self._stopping = stopping

    def execute(
        self,
        worker: AdapterWorker,
        command: str,
        args: Any,
        *,
        deadline: float,
        call_id: str = "",
        session_id: str = "",
        timeout: float | None = None,
    ) -> Any:
        """Run ``command`` on ``worker`` before ``deadline``; its result. ``timeout`` is the
        call's limit in seconds, for the message of an ExecutionTimeout."""
        request = _request(command, args, call_id, session_id)
        with _client_span(worker, "Execute", request):
            generation, response = self._send(worker, "Execute", request, deadline, timeout)
        if response.events or response.events_dropped:
            reemit(worker, response)
        if response.ok:
            return self._result(command, response.result)
        raise error_from_info(response.error, worker.worker_id)

    def _result(self, command: str, payload: pb.Payload) -> Any:
        size = len(payload.data)
        if size > self.max_result_bytes:
            raise SerializationError(
                f"the result of {command!r} is {size} bytes, over max_result_bytes "
                f"({self.max_result_bytes}); return large data through the zero-copy path "
                "or raise the limit",
                {"size": size, "limit": self.max_result_bytes},
            )
        value = serialization.decode(payload.data, payload.encoding)
        if payload.encoding == serialization.ZERO_COPY and self.relay is not None:
            return self.relay(value)
        return value

    def stream(
        self,
        worker: AdapterWorker,
        command: str,
        args: Any,
        *,
        deadline: float,
        on_chunk: Callable[[int, bytes], None],
        cancelled: threading.Event,
        call_id: str = "",
        session_id: str = "",
        timeout: float | None = None,
    ) -> Any:
        """Run a streaming tool on ``worker``; hand each chunk to ``on_chunk``; return the
        final result. Stops the tool (and frees the worker) once ``cancelled`` is set."""
        request = _request(command, args, call_id, session_id)
        with _client_span(worker, "ExecuteStream", request):
            return self._stream(worker, request, deadline, on_chunk, cancelled, timeout)

    def _stream(
        self,
        worker: AdapterWorker,
        request: pb.ExecuteRequest,
        deadline: float,
        on_chunk: Callable[[int, bytes], None],
        cancelled: threading.Event,
        timeout: float | None,
    ) -> Any:
        command = request.tool
        labels = {"call_id": request.call_id, "tool": command, "pool": worker.pool,
                  "node": worker.node, "worker_id": worker.worker_id}
        generation, rpc = self._send(worker, "ExecuteStream", request, deadline, timeout)
        threading.Thread(
            target=_cancel_when, args=(cancelled, rpc), name="stream-cancel", daemon=True
        ).start()
        limit = self.stream_max_chunk_bytes
        count = 0
        try:
            for message in rpc:
                if message.events or message.events_dropped:
                    reemit(worker, message)
                if message.is_final:
                    if message.HasField("error") and message.error.kind:
                        raise error_from_info(message.error, worker.worker_id)
                    return self._result(command, message.result)
                size = len(message.data.data)
                if size > limit:
                    rpc.cancel()
                    raise SerializationError(
                        f"chunk {message.seq} of {command!r} is {size} bytes, over the "
                        f"{limit}-byte limit (stream_max_chunk_bytes); send large data by "
                        "reference or raise the limit",
                        {"seq": message.seq, "size": size, "limit": limit},
                    )
                count += 1
                telemetry.emit(("snakepit", "stream", "chunk"),
                               {"seq": message.seq, "bytes": size}, labels)
                on_chunk(message.seq, message.data.data)
        except grpc.RpcError as exc:
            if cancelled.is_set():
                return _halted(count, labels)
            raise self._failure(worker, generation, command, exc, timeout) from None
        finally:
            rpc.close()
        if cancelled.is_set():
            return _halted(count, labels)
        raise WorkerCrashed(
            f"stream of {command!r} on {worker.worker_id} ended without a final message",
            {"worker_id": worker.worker_id},
        )

    def _send(
        self, worker: AdapterWorker, method: str, request: pb.ExecuteRequest, deadline: float,
        timeout: float | None = None,
    ) -> tuple[int, Any]:
        """Call the stub's ``method`` with what is left of ``deadline``: (the worker's
        generation, what the stub returned). Raises WorkerGone if the call cannot reach a live
        process, ExecutionTimeout if no time is left."""
        remaining = deadline - time.time()
        if remaining <= 0:
            raise ExecutionTimeout(
                f"call {request.tool!r} used up its timeout{_limit(timeout)} waiting in the "
                "queue and never ran; pass a larger timeout= or add workers",
                {"timeout": timeout},
            )
        generation = worker.generation
        stub, process = worker.stub, worker.process
        if stub is None or process is None or process_ended(process):
            self._mark_dead(worker, generation)
            raise WorkerGone(worker.worker_id)
        try:
            if method == "Execute":  # on the worker's call socket (see call_stream)
                stream = worker.call_stream()
                return generation, stream.call(request, remaining, tracing.grpc_metadata())
            if method == "ExecuteStream":  # a connection of its own to the call socket
                return generation, worker.open_stream(request, remaining,
                                                      tracing.grpc_metadata())
            call = getattr(stub, method)
            return generation, call(request, timeout=remaining, metadata=tracing.grpc_metadata())
        except ValueError:  # its channel was closed: the worker is being replaced
            self._mark_dead(worker, generation)
            raise WorkerGone(worker.worker_id) from None
        except grpc.RpcError as exc:
            raise self._failure(worker, generation, request.tool, exc, timeout) from None

    def _failure(
        self, worker: AdapterWorker, generation: int, tool: str, exc: grpc.RpcError,
        timeout: float | None = None,
    ) -> Exception:
        """The error a failed RPC means: WorkerGone (nothing ran), ExecutionTimeout, or
        WorkerCrashed with how the process ended."""
        code = exc.code() if hasattr(exc, "code") else None
        said = str(exc.details() if hasattr(exc, "details") else exc).lower()
        if code == grpc.StatusCode.UNAVAILABLE and any(m in said for m in _NOT_SENT_MARKERS):
            self._mark_dead(worker, generation)
            return WorkerGone(worker.worker_id)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            replaced = ""
            if worker.capacity == 1 and worker.generation == generation:
                # The tool is still running and owns the process: replace the worker so the
                # slot really becomes free (like a hard time limit).
                log.warning("call %r timed out on %s; replacing the worker", tool, worker.worker_id)
                self._mark_dead(worker, generation)
                worker.kill()
                replaced = f"; worker {worker.worker_id} was killed and is being restarted"
            return ExecutionTimeout(
                f"call {tool!r} did not finish within its timeout{_limit(timeout)} (queueing "
                f"and running){replaced}; pass a larger timeout= if it needs longer",
                {"worker_id": worker.worker_id, "timeout": timeout},
            )
        status = worker.exit_status(wait=2.0) if worker.generation == generation else None
        details: dict[str, Any] = {"worker_id": worker.worker_id, "tool": tool, "pid": worker.pid}
        if status is not None:
            details.update(exit_code=status.returncode, signal=status.signal)
            why = f" ({worker.kill_reason})" if worker.kill_reason else ""
            details["reason"] = worker.kill_reason or status.describe()
            after = "the node is stopping" if self._stopping() else "it is being restarted"
            return WorkerCrashed(
                f"worker {worker.worker_id} (pid {worker.pid}) {status.describe()}{why} while "
                f"running {tool!r}; {after}",
                details,
            )
        return WorkerCrashed(
            f"worker {worker.worker_id} became unreachable while running {tool!r} "
            f"({code.name if code else exc})",
            details,
        )


def _limit(timeout: float | None) -> str:
    """`` of N s`` for a message, or "" when the limit is not known."""
    return f" of {timeout:g} s" if timeout else ""


def error_from_info(info: pb.ErrorInfo, worker_id: str) -> SnakepitError:
    """The caller-facing exception for an error the runtime reported."""
    details: dict[str, Any] = {
        "type": info.type,
        "message": info.message,
        "traceback": info.traceback,
        "worker_id": worker_id,
    }
    if info.kind == "tool_not_found":
        wire = {
            "class": ToolNotFound.__name__,
            "message": info.message,
            "details": {"available": list(info.available_tools), **details},
        }
    elif info.kind == "serialization":
        wire = {"class": SerializationError.__name__, "message": info.message, "details": details}
    else:
        wire = {
            "class": AdapterError.__name__,
            "message": f"{info.type}: {info.message}",
            "details": details,
        }
    return from_wire(wire)


def _request(command: str, args: Any, call_id: str, session_id: str) -> pb.ExecuteRequest:
    data = serialization.encode_args(args)
    encoding = serialization.ZERO_COPY if serialization.has_stand_ins(data) else (
        serialization.JSON)
    return pb.ExecuteRequest(
        call_id=call_id,
        tool=command,
        args=pb.Payload(data=data, encoding=encoding),
        session_id=session_id,
    )


def _client_span(worker: AdapterWorker, rpc: str, request: pb.ExecuteRequest) -> Any:
    """The gRPC hop's client span (its context travels in the call's metadata)."""
    return tracing.span(f"snakepit.grpc {rpc}", {
        "rpc.system": "grpc", "rpc.method": rpc, "snakepit.tool": request.tool,
        "snakepit.worker_id": worker.worker_id, "snakepit.call_id": request.call_id,
    }, kind="client")


def _halted(count: int, labels: dict[str, Any]) -> dict[str, Any]:
    """What a stream its caller stopped returns."""
    telemetry.emit(("snakepit", "stream", "halted"), {"chunks": count}, labels)
    return {"halted": True, "chunks": count}


def _cancel_when(cancelled: threading.Event, rpc: Any) -> None:
    """Cancel ``rpc`` once ``cancelled`` is set; return when the RPC ends either way."""
    while not cancelled.wait(0.05):
        if not rpc.is_active():
            return
    rpc.cancel()
