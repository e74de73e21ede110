"""The node's ``HostTools`` service: how adapters reach host tools.

Served on a private unix socket (mode 0600) in the node's run directory, beside the
runtimes' sockets. A call of a session's tool is handed to the process that registered it
(``broker/host_tool_request.lua``, only while it holds its lease) and its reply awaited
(BLPOP, checking the lease between slices, so a registrant that dies mid-call fails the call
within ``node_lease_ttl_ms``); a global tool of the pool (``host_tools = [...]``) runs here.
The wait ends at ``host_tool_timeout_ms`` or the adapter call's own deadline, whichever
comes first.
"""

from __future__ import annotations

import importlib
import logging
import os
import secrets
import time
import traceback
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import redis

from .. import keys, lua, serialization
from .._proto import bridge_pb2 as pb
from .._proto import bridge_pb2_grpc as pb_grpc
from ..bridge.limits import MAX_MESSAGE_BYTES
from ..config import PoolConfig, Settings
from ..errors import SerializationError
from ..host_tools import registry, wire
from ..host_tools.context import Serving, serving
from ..host_tools.listener import run_host_function
from ..host_tools.spec import GLOBAL, HostToolSpec, check_name
from .worker import WorkerStartError

log = logging.getLogger("snakepit_tasks.node")

#: How often a node waiting for a reply checks that the registrant still holds its lease (s).
LEASE_CHECK_S = 0.5
#: Time kept back from the adapter's deadline so the answer reaches it before it gives up (s).
DEADLINE_MARGIN_S = 0.05
#: How long a request waits in a registrant's list past the node's wait (ms).
REQUEST_TTL_MARGIN_MS = 60_000


@dataclass(frozen=True)
class GlobalTool:
    """A host tool from the pool's configuration, run inside the node."""

    spec: HostToolSpec
    fn: Callable[..., Any]


class _Failure(Exception):
    def __init__(self, kind: str, message: str, type_: str = "", tb: str = "",
                 available: list[str] | None = None) -> None:
        super().__init__(message)
        self.info = pb.ErrorInfo(kind=kind, type=type_, message=message, traceback=tb,
                                 available_tools=available or [])


def load_global_tools(pool: PoolConfig) -> dict[str, GlobalTool]:
    """Import the pool's ``host_tools`` ("module:function"); WorkerStartError when one cannot
    be loaded (it fails the same way on every start, so the node is not restarted)."""
    found: dict[str, GlobalTool] = {}
    for spec in pool.host_tools:
        module_name, _, attr = spec.partition(":")
        try:
            value: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                value = getattr(value, part)
            if not callable(value):
                raise TypeError(f"{spec} is a {type(value).__name__}, not a function")
            name = check_name(getattr(value, "__name__", attr.rsplit(".", 1)[-1]))
        except Exception as exc:
            raise WorkerStartError(
                f"pool {pool.name!r}: host tool {spec!r} cannot be loaded: "
                f"{type(exc).__name__}: {exc}",
                {"adapter_load": True, "host_tool": spec},
            ) from None
        if name in found:
            raise WorkerStartError(
                f"pool {pool.name!r}: two host_tools are named {name!r}",
                {"adapter_load": True, "host_tool": spec},
            )
        doc = (getattr(value, "__doc__", None) or "").strip().split("\n")[0]
        found[name] = GlobalTool(HostToolSpec(name, doc, scope=GLOBAL), value)
    return found


class HostToolsServicer(pb_grpc.HostToolsServicer):
    """Lists and calls the host tools an adapter call may use."""

    def __init__(
        self, settings: Settings, pool: PoolConfig, r: redis.Redis,
        tools: dict[str, GlobalTool], threads: int,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.r = r
        self.globals = tools
        self.timeout_s = settings.host_tool_timeout_ms / 1000
        self._request = lua.script(r, "host_tool_request")
        self._local = futures.ThreadPoolExecutor(threads, thread_name_prefix="global-tool")

    def close(self) -> None:
        self._local.shutdown(wait=False, cancel_futures=True)

    # -- RPCs ----------------------------------------------------------------------------
    def ListTools(  # noqa: N802
        self, request: pb.ListHostToolsRequest, context: Any
    ) -> pb.ListHostToolsResponse:
        specs = [t.spec for t in self.globals.values()]
        if request.session_id:
            try:
                records = registry.live_records(self.r, request.session_id)
            except redis.RedisError as exc:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"Redis unreachable from node: {exc}")
                return pb.ListHostToolsResponse()  # abort raised; for the type checker
            mine = {n: registry.spec_of(rec) for n, rec in records.items()}
            specs = [s for s in specs if s.name not in mine]
            specs += [s for s in mine.values() if s.exposed]
        return pb.ListHostToolsResponse(
            tools=[
                pb.HostToolSpec(
                    name=s.name, description=s.description, scope=s.scope,
                    metadata=serialization.encode_result(s.metadata),
                )
                for s in sorted(specs, key=lambda s: s.name)
            ]
        )

    def CallTool(  # noqa: N802
        self, request: pb.CallHostToolRequest, context: Any
    ) -> pb.CallHostToolResponse:
        try:
            result = self._call(request, context)
        except _Failure as failed:
            return pb.CallHostToolResponse(ok=False, error=failed.info)
        except redis.RedisError as exc:
            return pb.CallHostToolResponse(ok=False, error=pb.ErrorInfo(
                kind="unavailable", type=type(exc).__name__,
                message=f"host tool {request.name!r}: Redis unreachable from node: {exc}",
            ))
        return pb.CallHostToolResponse(
            ok=True, result=pb.Payload(data=result, encoding=serialization.JSON)
        )

    # -- the call ------------------------------------------------------------------------
    def _call(self, request: pb.CallHostToolRequest, context: Any) -> bytes:
        name, session_id = request.name, request.session_id
        args = request.args.data or b"{}"
        if len(args) > self.settings.max_call_bytes:
            raise _Failure(wire.SERIALIZATION, f"the arguments of host tool {name!r} are "
                           f"{len(args)} bytes, over max_call_bytes "
                           f"({self.settings.max_call_bytes})", "SerializationError")
        budget, limit = self._budget(context)
        if budget <= 0:
            raise _Failure(wire.TIMEOUT, f"host tool {name!r} was called after the call's "
                           "deadline had passed", "ExecutionTimeout")
        record = registry.find(self.r, session_id, name) if session_id else None
        if record is not None and record.get("exposed", True):
            req = wire.Request(
                id=secrets.token_hex(12), session_id=session_id, tool=name,
                deadline=time.time() + budget, args=args, call_id=request.call_id,
                worker_id=request.worker_id, capacity=self.pool.capacity,
            )
            owner = str(record["owner"])
            sent = self._request(
                keys=[keys.host_registrant(owner), keys.host_requests(owner)],
                args=[wire.encode_request(req), int(budget * 1000) + REQUEST_TTL_MARGIN_MS],
            )
            if sent:
                return self._await(req, owner, record, limit, context)
            if name not in self.globals:
                raise self._not_found(
                    session_id, name, f"host tool {name!r} of session {session_id!r} was "
                    f"registered by {registry.describe_owner(record)}, which is gone")
        tool = self.globals.get(name)
        if tool is None:
            raise self._not_found(session_id, name)
        return self._run_global(tool, args, request, budget, limit)

    def _budget(self, context: Any) -> tuple[float, str]:
        """Seconds to wait for the answer, and which limit sets it (for messages)."""
        remaining = context.time_remaining() if context is not None else None
        if remaining is None or remaining - DEADLINE_MARGIN_S >= self.timeout_s:
            return self.timeout_s, f"host_tool_timeout_ms ({self.settings.host_tool_timeout_ms})"
        return remaining - DEADLINE_MARGIN_S, "the call's own deadline"

    def _await(self, req: wire.Request, owner: str, record: dict[str, Any], limit: str,
               context: Any) -> bytes:
        reply_key, lease = keys.host_reply(req.id), keys.host_registrant(owner)
        who = registry.describe_owner(record)
        while True:
            left = req.deadline - time.time()
            if left <= 0:
                raise _Failure(wire.TIMEOUT, f"host tool {req.tool!r} of session "
                               f"{req.session_id!r} ({who}) did not answer within {limit}",
                               "ExecutionTimeout")
            got: Any = self.r.blpop([reply_key], timeout=max(0.01, min(LEASE_CHECK_S, left)))
            if got:
                ok, body = wire.decode_reply(bytes(got[1]))
                if ok:
                    assert isinstance(body, bytes)
                    return self._checked_result(req.tool, body)
                assert isinstance(body, dict)
                raise _Failure(body["kind"], body["message"], body["type"], body["traceback"])
            if not self.r.exists(lease):
                raise _Failure(wire.TIMEOUT, f"host tool {req.tool!r} of session "
                               f"{req.session_id!r}: the process that registered it ({who}) "
                               "went away during the call", "ExecutionTimeout")
            if context is not None and not context.is_active():
                raise _Failure(wire.TIMEOUT, f"host tool {req.tool!r}: the adapter stopped "
                               "waiting", "ExecutionTimeout")

    def _run_global(self, tool: GlobalTool, args: bytes, request: pb.CallHostToolRequest,
                    budget: float, limit: str) -> bytes:
        try:
            decoded = serialization.decode(args)
        except SerializationError as exc:
            raise _Failure(wire.SERIALIZATION, str(exc), "SerializationError") from None
        if not isinstance(decoded, dict):
            raise _Failure(wire.BAD_REQUEST, "host tool arguments must be a mapping")
        call = Serving(request.session_id, tool.spec.name, request.worker_id, self.pool.capacity)

        def run() -> Any:
            with serving(call):
                return run_host_function(tool.fn, decoded)

        future = self._local.submit(run)
        try:
            value = future.result(timeout=budget)
        except futures.TimeoutError:
            raise _Failure(wire.TIMEOUT, f"global host tool {tool.spec.name!r} did not finish "
                           f"within {limit}", "ExecutionTimeout") from None
        except Exception as exc:
            raise _Failure(wire.HOST_TOOL, str(exc), type(exc).__name__,
                           "".join(traceback.format_exception(exc))) from None
        try:
            body = serialization.encode_result(value)
        except SerializationError as exc:
            raise _Failure(wire.SERIALIZATION, f"the result of host tool "
                           f"{tool.spec.name!r}: {exc}", "SerializationError") from None
        return self._checked_result(tool.spec.name, body)

    def _checked_result(self, name: str, body: bytes) -> bytes:
        if len(body) > self.settings.max_result_bytes:
            raise _Failure(wire.SERIALIZATION, f"the result of host tool {name!r} is "
                           f"{len(body)} bytes, over max_result_bytes "
                           f"({self.settings.max_result_bytes})", "SerializationError")
        return body

    def _not_found(self, session_id: str, name: str, why: str = "") -> _Failure:
        available = set(self.globals)
        if session_id:
            records = registry.live_records(self.r, session_id)
            available |= {n for n, rec in records.items() if rec.get("exposed", True)}
        listed = ", ".join(sorted(available)) or "none"
        if not why:
            where = f"session {session_id!r}" if session_id else "this call (it has no session)"
            why = f"no host tool {name!r} for {where}"
        return _Failure(wire.TOOL_NOT_FOUND, f"{why}; available host tools: {listed}",
                        "ToolNotFound", available=sorted(available))


class HostToolsServer:
    """The node's HostTools gRPC server on ``socket_path`` (mode 0600)."""

    def __init__(self, settings: Settings, pool: PoolConfig, r: redis.Redis, socket_path: str,
                 capacity: int) -> None:
        self.settings = settings
        self.pool = pool
        self.r = r
        self.socket_path = socket_path
        # Each bridged call holds a server thread while it waits; leave room for all of them.
        self.threads = 2 * max(1, capacity) + 8
        self._server: Any = None
        self._servicer: HostToolsServicer | None = None

    def start(self) -> None:
        """Load the pool's global tools and serve (raises WorkerStartError on a bad tool)."""
        tools = load_global_tools(self.pool)
        self._servicer = HostToolsServicer(self.settings, self.pool, self.r, tools, self.threads)
        server = grpc.server(
            futures.ThreadPoolExecutor(self.threads, thread_name_prefix="host-tools"),
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        pb_grpc.add_HostToolsServicer_to_server(self._servicer, server)
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        old_umask = os.umask(0o177)
        try:
            server.add_insecure_port(f"unix:{self.socket_path}")
            server.start()
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o600)
        self._server = server
        if tools:
            log.info("pool %s: global host tools %s", self.pool.name, ", ".join(sorted(tools)))

    def stop(self) -> None:
        """Stop serving (calls in flight get a second to finish)."""
        if self._server is not None:
            self._server.stop(grace=1.0).wait(2.0)
            self._server = None
        if self._servicer is not None:
            self._servicer.close()
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass

