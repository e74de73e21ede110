"""The adapter's side of the tool bridge: a client of its node's ``HostTools`` service.

One per runtime process (a gRPC channel on the node's unix socket, safe for many threads);
:class:`~snakepit_tasks.bridge.adapter.SessionContext` uses it. Failures arrive as the
project's errors: ToolNotFound, HostToolError (the host function raised), ExecutionTimeout
(no answer in time, or the registrant went away), SerializationError.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc

from .. import serialization
from .._proto import bridge_pb2 as pb
from .._proto import bridge_pb2_grpc as pb_grpc
from ..errors import (
    ExecutionTimeout,
    HostToolError,
    RedisUnavailable,
    SerializationError,
    SnakepitError,
    ToolNotFound,
)
from ..host_tools.spec import HostToolSpec
from .limits import MAX_MESSAGE_BYTES


class HostToolsClient:
    """Calls and lists host tools through the node's socket at ``socket_path``."""

    def __init__(self, socket_path: str, worker_id: str) -> None:
        self.socket_path = socket_path
        self.worker_id = worker_id
        self._lock = threading.Lock()
        self._stub: pb_grpc.HostToolsStub | None = None

    def _service(self) -> pb_grpc.HostToolsStub:
        with self._lock:
            if self._stub is None:
                channel = grpc.insecure_channel(
                    f"unix:{self.socket_path}",
                    options=[
                        ("grpc.enable_http_proxy", 0),
                        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    ],
                )
                self._stub = pb_grpc.HostToolsStub(channel)
            return self._stub

    def call(
        self,
        name: str,
        args: dict[str, Any],
        *,
        session_id: str,
        call_id: str = "",
        deadline: float | None = None,
    ) -> Any:
        """Run host tool ``name`` with keyword arguments ``args``; its result."""
        request = pb.CallHostToolRequest(
            session_id=session_id,
            name=name,
            args=pb.Payload(data=serialization.encode_args(args), encoding=serialization.JSON),
            call_id=call_id,
            worker_id=self.worker_id,
        )
        response = self._rpc("CallTool", request, name, session_id, deadline)
        if not response.ok:
            raise error_of(name, session_id, response.error)
        return serialization.decode(response.result.data, response.result.encoding)

    def list(self, session_id: str, deadline: float | None = None) -> list[HostToolSpec]:
        """The host tools this call may use: the session's exposed ones and the pool's."""
        request = pb.ListHostToolsRequest(session_id=session_id, worker_id=self.worker_id)
        response = self._rpc("ListTools", request, "", session_id, deadline)
        return [
            HostToolSpec(
                name=t.name,
                description=t.description,
                metadata=serialization.decode(t.metadata) or {},
                scope=t.scope,
            )
            for t in response.tools
        ]

    def _rpc(
        self, method: str, request: Any, name: str, session_id: str, deadline: float | None
    ) -> Any:
        what = f"host tool {name!r}" if name else "the host tool list"
        timeout = None if deadline is None else deadline - time.time()
        if timeout is not None and timeout <= 0:
            raise ExecutionTimeout(
                f"{what}: the call's deadline has passed", {"tool": name, "session_id": session_id}
            )
        try:
            return getattr(self._service(), method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            said = exc.details() if hasattr(exc, "details") else str(exc)
            details = {"tool": name, "session_id": session_id}
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ExecutionTimeout(
                    f"{what} did not answer before the call's deadline", details
                ) from None
            raise SnakepitError(
                f"{what}: the node's HostTools service cannot be reached at "
                f"{self.socket_path} ({code.name if code else 'error'}: {said})",
                details,
            ) from None


def error_of(name: str, session_id: str, info: pb.ErrorInfo) -> SnakepitError:
    """The exception for a failed host-tool call, raised in the adapter."""
    details: dict[str, Any] = {
        "tool": name,
        "session_id": session_id,
        "type": info.type,
        "message": info.message,
        "traceback": info.traceback,
    }
    if info.kind == "tool_not_found":
        return ToolNotFound(info.message, {**details, "available": list(info.available_tools)})
    if info.kind == "host_tool":
        return HostToolError(f"host tool {name!r} raised {info.type}: {info.message}", details)
    if info.kind == "timeout":
        return ExecutionTimeout(info.message, details)
    if info.kind == "serialization":
        return SerializationError(info.message, details)
    if info.kind == "unavailable":
        return RedisUnavailable(info.message, details)
    return SnakepitError(f"host tool {name!r}: {info.message}", details)
