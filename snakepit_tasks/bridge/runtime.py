"""The adapter runtime: one worker process serving an adapter over gRPC on a unix socket.

Started by a node as ``python -m snakepit_tasks.bridge.runtime --adapter module:Class ...``.
It reports readiness on an inherited pipe only once it can serve, and exits when its node dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Generator, Iterator
from concurrent import futures
from typing import Any

import grpc

from .. import processes, serialization, zero_copy
from .._proto import bridge_pb2 as pb
from .._proto import bridge_pb2_grpc as pb_grpc
from ..config import load_settings
from ..errors import ConfigurationError, SerializationError
from ..hardware import DEVICE_ENV
from ..serialization import redact
from ..telemetry import tracing
from ..zero_copy import process as zero_copy_process
from . import calls, logs, telemetry
from .adapter import BaseAdapter, SessionContext
from .host_client import HostToolsClient
from .limits import MAX_MESSAGE_BYTES


class _ToolFailure(Exception):
    def __init__(self, info: pb.ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


def load_adapter(spec: str) -> type[BaseAdapter]:
    """Import ``module:Class`` and check it is an adapter class."""
    module_name, _, class_name = spec.partition(":")
    module = importlib.import_module(module_name)
    try:
        cls = getattr(module, class_name)
    except AttributeError:
        raise ImportError(f"module {module_name!r} has no attribute {class_name!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, BaseAdapter)):
        raise TypeError(f"{spec} is not a subclass of snakepit_tasks.bridge.BaseAdapter")
    return cls


def _error(kind: str, exc: BaseException | None = None, **fields: Any) -> pb.ErrorInfo:
    info = pb.ErrorInfo(kind=kind, **fields)
    if exc is not None:
        info.type = type(exc).__name__
        info.message = redact(str(exc))
        info.traceback = redact("".join(traceback.format_exception(exc)))
    return info


def _error_info(exc: Exception) -> pb.ErrorInfo:
    """What the node is told about a call that failed with ``exc``."""
    if isinstance(exc, _ToolFailure):
        return exc.info
    if isinstance(exc, SerializationError):
        return _error("serialization", exc)
    return _error("adapter", exc)


def _payload(value: Any) -> pb.Payload:
    """``value`` encoded for the wire (raises SerializationError)."""
    return pb.Payload(data=serialization.encode_result(value), encoding=serialization.JSON)


class _LargeData:
    """This runtime's zero-copy side: results of at least the threshold become handles to
    its arena (its node relays them); arguments that are handles are mapped."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self._options: zero_copy.Options | None = None

    @property
    def options(self) -> zero_copy.Options:
        if self._options is None:
            try:  # the node passes its zero-copy settings in the environment
                self._options = zero_copy.Options.from_settings(load_settings())
            except ConfigurationError as exc:
                print(f"snakepit runtime: zero-copy uses its defaults: {exc}", file=sys.stderr)
                self._options = zero_copy.Options()
        return self._options

    def result(self, value: Any) -> pb.Payload:
        """A result encoded for the wire: large data as handles (raises SerializationError)."""
        export = zero_copy_process.LazyExport(self._begin)
        try:
            data = serialization.encode_result(value, export.default)
        except BaseException:
            export.abandon()
            raise
        encoding = serialization.ZERO_COPY if export.used else serialization.JSON
        return pb.Payload(data=data, encoding=encoding)

    def _begin(self) -> Any:
        exporter = zero_copy_process.exporter(
            self.options, f"runtime {self.worker_id} (pid {os.getpid()})", relayed=True)
        return exporter.begin(arguments=False)

    def arguments(self, payload: pb.Payload, received: list[Any]) -> Any:
        """A call's arguments, handles mapped (read-only) into this process; the values
        made from them are appended to ``received`` (to release after the call)."""
        if payload.encoding != serialization.ZERO_COPY and not (
                serialization.has_stand_ins(payload.data)):
            return serialization.decode(payload.data, payload.encoding)
        transport = self.options.transport
        return serialization.decode(payload.data, payload.encoding,
                                    lambda v: zero_copy.resolve(v, transport, received))


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _iterate(value: Any) -> Generator[Any, None, Any]:
    """Iterate a sync or async generator from a worker thread; returns its return value."""
    if inspect.isasyncgen(value):
        loop = asyncio.new_event_loop()
        try:
            while True:
                try:
                    yield loop.run_until_complete(value.__anext__())
                except StopAsyncIteration:
                    return None
        finally:
            loop.run_until_complete(value.aclose())
            loop.close()
    else:
        return (yield from value)


class AdapterServicer(pb_grpc.AdapterRuntimeServicer):
    """Serves one adapter class; a new adapter instance per call."""

    def __init__(
        self,
        adapter_cls: type[BaseAdapter],
        worker_id: str,
        capacity: int,
        host_tools: HostToolsClient | None = None,
    ) -> None:
        self.adapter_cls = adapter_cls
        self.host_tools = host_tools
        self.worker_id = worker_id
        self.capacity = capacity
        self.tools = adapter_cls.tools()
        self._methods = {name: adapter_cls.tool_method_name(name) for name in self.tools}
        self._inflight = 0
        self._lock = threading.Lock()
        self.large_data = _LargeData(worker_id)
        self.device = os.environ.get(DEVICE_ENV) or "cpu"
        # At most ``capacity`` tools run at once, even while a cancelled stream winds down.
        self._slots = threading.BoundedSemaphore(capacity)
        self._streams: set[Any] = set()  # the contexts of open Calls streams

    # -- helpers -----------------------------------------------------------------------
    def _context(self, session_id: str, call_id: str, metadata: Any, rpc: Any) -> SessionContext:
        """What a tool knows of its call; its deadline is the node's RPC deadline."""
        remaining = rpc.time_remaining() if hasattr(rpc, "time_remaining") else None
        return SessionContext(
            session_id=session_id,
            worker_id=self.worker_id,
            call_id=call_id,
            metadata=dict(metadata),
            deadline=None if remaining is None else time.time() + remaining,
            host_client=self.host_tools,
            device=self.device,
        )

    def _prepare(
        self, request: pb.ExecuteRequest, received: list[Any], rpc: Any = None
    ) -> tuple[BaseAdapter, Any, dict[str, Any]]:
        method_name = self._methods.get(request.tool)
        if method_name is None:
            raise _ToolFailure(
                _error(
                    "tool_not_found",
                    type="ToolNotFound",
                    message=f"unknown tool {request.tool!r}; this adapter has: "
                    + ", ".join(sorted(self.tools)),
                    available_tools=sorted(self.tools),
                )
            )
        try:
            args = self.large_data.arguments(request.args, received)
        except SerializationError as exc:
            raise _ToolFailure(_error("serialization", exc)) from None
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise _ToolFailure(
                _error("bad_request", type="TypeError", message="arguments must be a mapping")
            )
        instance = self.adapter_cls()
        instance.device = self.device
        instance.session_context = self._context(
            request.session_id, request.call_id, request.metadata, rpc
        )
        return instance, getattr(instance, method_name), args

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        """One of the ``capacity`` slots, held for the whole call."""
        self._slots.acquire()
        with self._lock:
            self._inflight += 1
        try:
            yield
        finally:
            with self._lock:
                self._inflight -= 1
            self._slots.release()

    @contextlib.contextmanager
    def _tool(self, request: pb.ExecuteRequest, rpc: Any = None) -> Iterator[Callable[[], Any]]:
        """The requested tool bound to its arguments, on a fresh adapter instance that is
        initialized before it and cleaned up after it (even when it raises)."""
        received: list[Any] = []
        try:
            instance, method, args = self._prepare(request, received, rpc)
            instance.initialize()
            try:
                with tracing.span(request.tool, {"snakepit.call_id": request.call_id}):
                    yield lambda: method(**args)
            finally:
                instance.cleanup()
        finally:
            zero_copy.release(received)  # arguments mapped from a caller's memory: done

    @contextlib.contextmanager
    def _traced(self, request: pb.ExecuteRequest, context: Any, rpc: str) -> Iterator[None]:
        """The call's server span (its parent comes from the gRPC metadata); events emitted
        inside are the call's."""
        parent = tracing.extract(dict(context.invocation_metadata() or ())) if (
            tracing.enabled()) else None
        attributes = {"snakepit.worker_id": self.worker_id, "snakepit.tool": request.tool,
                      "snakepit.call_id": request.call_id}
        with tracing.span(f"snakepit.runtime {rpc}", attributes, kind="server",
                          context=parent), telemetry.in_call(request.call_id, request.tool):
            yield

    # -- RPCs ----------------------------------------------------------------------------
    def Ping(self, request: pb.PingRequest, context: Any) -> pb.PingResponse:  # noqa: N802
        return pb.PingResponse(message="pong", worker_id=self.worker_id, pid=os.getpid())

    def Describe(self, request: pb.DescribeRequest, context: Any) -> pb.DescribeResponse:  # noqa: N802
        tools = [
            pb.ToolSpec(
                name=spec.name,
                description=spec.description,
                supports_streaming=spec.supports_streaming,
                idempotent=spec.idempotent,
                parameters=[
                    pb.ParameterSpec(name=n, annotation=a, required=r)
                    for n, a, r in spec.parameters
                ],
            )
            for spec in self.tools.values()
        ]
        cls = self.adapter_cls
        return pb.DescribeResponse(
            adapter=f"{cls.__module__}:{cls.__qualname__}",
            worker_id=self.worker_id,
            pid=os.getpid(),
            capacity=self.capacity,
            thread_safe=bool(getattr(cls, "__thread_safe__", False)),
            tools=tools,
        )

    def Execute(self, request: pb.ExecuteRequest, context: Any) -> pb.ExecuteResponse:  # noqa: N802
        started = time.perf_counter_ns()
        with self._slot(), self._traced(request, context, "Execute"):
            try:
                with self._tool(request, context) as run:
                    value = run()
                    if inspect.isgenerator(value) or inspect.isasyncgen(value):
                        value = list(_iterate(value))
                    # encoded before the arguments are released: it may hold one of them
                    result = self.large_data.result(value)
            except Exception as exc:
                return _with_events(pb.ExecuteResponse(ok=False, error=_error_info(exc)))
        return _with_events(pb.ExecuteResponse(
            ok=True, result=result, duration_us=(time.perf_counter_ns() - started) // 1000
        ))

    def Calls(  # noqa: N802
        self, request_iterator: Iterator[pb.CallFrame], context: Any
    ) -> Iterator[pb.CallReply]:
        """The node's one long-lived stream to this worker: its calls, multiplexed by id."""
        with self._lock:
            self._streams.add(context)
        context.add_callback(lambda: self._forget_stream(context))
        return calls.serve_calls(self.Execute, request_iterator, context, self.capacity)

    def _forget_stream(self, context: Any) -> None:
        with self._lock:
            self._streams.discard(context)

    def end_streams(self, grace: float) -> None:
        """Before the server stops: let the calls in flight finish (up to ``grace`` seconds),
        then end the open Calls streams (an idle stream would hold a graceful stop for its
        whole grace)."""
        deadline = time.monotonic() + grace
        while self._inflight and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            streams = list(self._streams)
        for context in streams:
            context.cancel()

    def ExecuteStream(  # noqa: N802
        self, request: pb.ExecuteRequest, context: Any
    ) -> Generator[pb.StreamChunk, None, None]:
        stopped = threading.Event()
        context.add_callback(stopped.set)  # the caller went away, or the call ended
        with self._slot(), self._traced(request, context, "ExecuteStream"):
            seq = 0
            final: pb.Payload | None = None
            try:
                with self._tool(request, context) as run:
                    value = run()
                    if inspect.isgenerator(value) or inspect.isasyncgen(value):
                        with contextlib.closing(_iterate(value)) as items:
                            while not stopped.is_set():
                                try:
                                    item = next(items)
                                except StopIteration as stop:
                                    value = stop.value
                                    break
                                seq += 1
                                yield _with_events(pb.StreamChunk(seq=seq, data=_payload(item)))
                    else:  # a tool that does not stream: its result is the one chunk
                        seq += 1
                        yield _with_events(pb.StreamChunk(seq=seq, data=_payload(value)))
                    if not stopped.is_set():
                        final = self.large_data.result(value)
                if stopped.is_set() or final is None:
                    return
                yield _with_events(pb.StreamChunk(seq=seq + 1, is_final=True, result=final))
            except GeneratorExit:
                raise
            except Exception as exc:
                failed = pb.StreamChunk(seq=seq + 1, is_final=True, error=_error_info(exc))
                yield _with_events(failed)

    def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:  # noqa: N802
        return _with_events(pb.HeartbeatResponse(
            seq=request.seq, pid=os.getpid(), rss_bytes=_rss_bytes(), inflight=self._inflight
        ))

    def _session_hook(
        self, hook: str, request: pb.SessionRequest, rpc: Any = None
    ) -> pb.SessionResponse:
        fn = getattr(self.adapter_cls, hook, None)
        if fn is None:
            return pb.SessionResponse(ok=True)
        instance = self.adapter_cls()
        instance.device = self.device
        instance.session_context = self._context(request.session_id, "", request.metadata, rpc)
        try:
            getattr(instance, hook)()
        except Exception as exc:
            return pb.SessionResponse(ok=False, error=_error("session", exc))
        return pb.SessionResponse(ok=True)

    def InitializeSession(self, request: pb.SessionRequest, context: Any) -> pb.SessionResponse:  # noqa: N802
        return self._session_hook("initialize_session", request, context)

    def CleanupSession(self, request: pb.SessionRequest, context: Any) -> pb.SessionResponse:  # noqa: N802
        return self._session_hook("cleanup_session", request, context)


def _with_events(message: Any) -> Any:
    """``message`` carrying the telemetry events buffered so far (see bridge.telemetry)."""
    events, dropped = telemetry.drain()
    if events:
        message.events.extend(events)
    if dropped:
        message.events_dropped = dropped
    return message


def _die_with_parent(parent_pid: int) -> None:
    """Exit when the process that started us (the node, or its zygote) is gone: parent-death
    signal plus a watch thread."""
    processes.set_parent_death_signal(signal.SIGKILL)
    if not parent_pid:
        return
    if os.getppid() != parent_pid:
        os._exit(0)  # the parent died before we armed the signal
    processes.watch_parent(parent_pid, lambda: os._exit(0))


def _report(fd: int, message: dict[str, Any]) -> None:
    if fd < 0:
        return
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(message) + "\n")


def serve(
    adapter: str,
    socket_path: str,
    worker_id: str,
    capacity: int = 1,
    ready_fd: int = -1,
    parent_pid: int = 0,
    host_tools_socket: str = "",
    log_level: int = 40,
    otel_setup: str | None = None,
    calls_socket: str = "",
) -> int:
    """Serve ``adapter`` until SIGTERM/SIGINT or the parent's death; returns the exit code.
    ``log_level``: what this process logs (to its node); ``otel_setup``: trace calls, after
    running that hook ("" for none); None: no tracing. ``calls_socket``: where to serve the
    node's call socket (see .calls), beside the gRPC server at ``socket_path``."""
    _die_with_parent(parent_pid)
    logs.install(log_level)
    try:
        if otel_setup is not None:
            tracing.enable(otel_setup)
    except BaseException as exc:
        _report(ready_fd, {"ok": False, "kind": "adapter_load",
                           "error": f"cannot start tracing: {type(exc).__name__}: {exc}"})
        return 3
    try:
        adapter_cls = load_adapter(adapter)
        if capacity > 1 and not getattr(adapter_cls, "__thread_safe__", False):
            raise TypeError(
                f"{adapter} is not thread-safe but the pool uses the thread profile "
                f"({capacity} calls at once): subclass ThreadSafeAdapter or set "
                "__thread_safe__ = True after making it safe"
            )
    except BaseException as exc:
        _report(
            ready_fd,
            {
                "ok": False,
                "kind": "adapter_load",
                "error": f"cannot load adapter {adapter!r}: {type(exc).__name__}: {exc}",
                "traceback": "".join(traceback.format_exception(exc)),
            },
        )
        return 3

    host_tools = HostToolsClient(host_tools_socket, worker_id) if host_tools_socket else None
    servicer = AdapterServicer(adapter_cls, worker_id, capacity, host_tools)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=capacity + 4, thread_name_prefix="tool"),
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    pb_grpc.add_AdapterRuntimeServicer_to_server(servicer, server)
    old_umask = os.umask(0o177)
    try:
        server.add_insecure_port(f"unix:{socket_path}")
        server.start()
    finally:
        os.umask(old_umask)
    os.chmod(socket_path, 0o600)
    call_server = (calls.CallServer(calls_socket, servicer.Execute, capacity,
                                    servicer.ExecuteStream) if calls_socket else None)

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _report(ready_fd, {"ok": True, "pid": os.getpid(), "tools": sorted(servicer.tools)})
    stop.wait()
    began = time.monotonic()
    servicer.end_streams(grace=1.0)
    if call_server is not None:
        call_server.close()
    server.stop(grace=max(0.0, 1.0 - (time.monotonic() - began))).wait(2.0)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m snakepit_tasks.bridge.runtime``."""
    parser = argparse.ArgumentParser(prog="snakepit_tasks.bridge.runtime")
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--capacity", type=int, default=1)
    parser.add_argument("--ready-fd", type=int, default=-1)
    parser.add_argument("--parent-pid", type=int, default=0)
    # Forked by the node's zygote (see .zygote): it is the parent to die with.
    parser.add_argument("--zygote-pid", type=int, default=0)
    # Carried on the command line so orphan sweeps can recognise our processes.
    parser.add_argument("--run-id", default="")
    parser.add_argument("--instance", default="")
    parser.add_argument("--host-tools-socket", default="")
    parser.add_argument("--log-level", type=int, default=40)
    parser.add_argument("--otel-setup", default=None, help="trace calls (after this hook)")
    parser.add_argument("--calls-socket", default="", help="serve the node's call socket here")
    ns = parser.parse_args(argv)
    return serve(ns.adapter, ns.socket, ns.worker_id, ns.capacity, ns.ready_fd,
                 ns.zygote_pid or ns.parent_pid,
                 ns.host_tools_socket, ns.log_level, ns.otel_setup, ns.calls_socket)


if __name__ == "__main__":
    sys.exit(main())
