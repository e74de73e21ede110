"""One worker: an adapter runtime process owned by a node, and the gRPC channel to it."""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc

from .. import processes, telemetry
from .._proto import bridge_pb2 as pb
from .._proto import bridge_pb2_grpc as pb_grpc
from ..bridge.limits import MAX_MESSAGE_BYTES
from ..errors import ConfigurationError
from ..processes import ExitStatus
from . import output
from .call_stream import CallStream, ChunkStream
from .zygote import ForkedProcess, Zygote, ZygoteUnavailable

log = logging.getLogger("snakepit_tasks.node")

# Thread-count variables set to 1 for the process profile, so N workers do not start N×cores
# BLAS/OpenMP threads each.
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
#: After SIGKILL, how long :meth:`AdapterWorker.stop` waits for the runtime to vanish (s).
KILL_WAIT_S = 2.0
#: The module a runtime runs (``python -m``).
RUNTIME_MODULE = "snakepit_tasks.bridge.runtime"

#: A runtime process: a child of the node, or forked by the node's zygote.
RuntimeProcess = subprocess.Popen[bytes] | ForkedProcess


def process_ended(process: RuntimeProcess, *, block: bool = False) -> bool:
    """Whether ``process`` has ended (with ``block``, once it has), without reaping it: a
    child's exit watcher may hold its Popen's wait lock meanwhile."""
    if isinstance(process, ForkedProcess):
        if block:
            process.wait()
        return process.returncode is not None
    flags = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
    try:
        return os.waitid(os.P_PID, process.pid, flags) is not None
    except ChildProcessError:
        return True  # already reaped


class WorkerStartError(ConfigurationError):
    """A worker process could not be started or did not become ready."""


class AdapterWorker:
    """An adapter runtime process and the stub that calls it. Not thread-safe: the node's
    :class:`~snakepit_tasks.node.workerset.WorkerSet` serialises start/stop."""

    def __init__(
        self,
        worker_id: str,
        index: int,
        adapter: str,
        capacity: int,
        run_dir: str,
        run_id: str,
        instance: str,
        env: dict[str, str],
        *,
        pool: str = "",
        node: str = "",
        runtime_args: Sequence[str] = (),
        zygote: Zygote | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.zygote = zygote  # forks the runtime, when the node has one
        self.pool = pool
        self.node = node
        self.runtime_args = tuple(runtime_args)
        self.index = index
        self.adapter = adapter
        self.capacity = capacity
        self.socket_path = os.path.join(run_dir, f"w{index}.sock")  # its gRPC server
        self.calls_path = os.path.join(run_dir, f"c{index}.sock")  # its call socket
        self.run_id = run_id
        self.instance = instance
        self.env = env
        self.host_tools_socket = ""  # the node's HostTools socket, passed to the runtime
        self.process: RuntimeProcess | None = None
        self.channel: grpc.Channel | None = None
        self.stub: pb_grpc.AdapterRuntimeStub | None = None
        self._calls: CallStream | None = None  # opened at the first call (see call_stream)
        self._calls_lock = threading.Lock()
        self.state = "new"  # new | starting | ready | dead | stopped
        self.generation = 0
        self.inflight = 0
        self.requests = 0
        self.started_at = 0.0
        self.tools: dict[str, pb.ToolSpec] = {}
        self.missed_heartbeats = 0
        self.rss_bytes = 0
        self.kill_reason = ""
        self.recycle_reason = ""
        self._ready_fd = -1

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def has_free_slot(self) -> bool:
        """Ready, with fewer calls in flight than its capacity."""
        return self.state == "ready" and self.inflight < self.capacity

    def spawn(self) -> None:
        """Start the runtime process; :meth:`wait_ready` finishes the start."""
        for path in (self.socket_path, self.calls_path):
            if os.path.exists(path):
                os.unlink(path)
        read_fd, write_fd = os.pipe()
        args = [
            "--adapter",
            self.adapter,
            "--socket",
            self.socket_path,
            "--calls-socket",
            self.calls_path,
            "--worker-id",
            self.worker_id,
            "--capacity",
            str(self.capacity),
            "--parent-pid",
            str(os.getpid()),
            "--run-id",
            self.run_id,
            "--instance",
            self.instance,
            *self.runtime_args,
        ]
        if self.host_tools_socket:
            args += ["--host-tools-socket", self.host_tools_socket]
        try:
            self.process = self._start(args, write_fd)
        finally:
            os.close(write_fd)
        assert self.process.stdout is not None and self.process.stderr is not None
        output.forward(self.process.stdout, self.worker_id, "stdout")
        output.forward(self.process.stderr, self.worker_id, "stderr")
        self._ready_fd = read_fd
        self.generation += 1
        self.state = "starting"
        self.started_at = time.time()
        self.requests = 0
        self.missed_heartbeats = 0
        self.rss_bytes = 0
        self.kill_reason = ""
        self.recycle_reason = ""
        telemetry.emit(("snakepit", "worker", "spawned"), {"system_time": time.time_ns()},
                       self._labels())

    def _start(self, args: list[str], ready_fd: int) -> RuntimeProcess:
        """The runtime process: forked by the zygote, else a fresh interpreter."""
        if self.zygote is not None:
            try:
                return self.zygote.spawn(args, self.env, ready_fd)
            except ZygoteUnavailable as exc:
                log.warning("worker %s: %s; starting it in a fresh interpreter",
                            self.worker_id, exc)
        return subprocess.Popen(
            [sys.executable, "-m", RUNTIME_MODULE, *args, "--ready-fd", str(ready_fd)],
            env=self.env,
            pass_fds=(ready_fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,  # into the node's log, tagged (see .output)
            stderr=subprocess.PIPE,
            start_new_session=True,  # own process group: its children die with it
        )

    def _labels(self) -> dict[str, Any]:
        return {"pool": self.pool, "node": self.node, "worker_id": self.worker_id,
                "pid": self.pid}

    def wait_ready(self, timeout: float) -> None:
        """Block until the runtime serves, or raise WorkerStartError (and stop it)."""
        deadline = time.monotonic() + timeout
        data = b""
        try:
            while not data.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WorkerStartError(
                        f"worker {self.worker_id} ({self.adapter}) was not ready within "
                        f"{timeout:.1f}s",
                        {"worker_id": self.worker_id},
                    )
                readable, _, _ = select.select([self._ready_fd], [], [], remaining)
                if not readable:
                    continue
                part = os.read(self._ready_fd, 65536)
                if not part:
                    break
                data += part
        except WorkerStartError:
            self.kill()
            raise
        finally:
            os.close(self._ready_fd)
            self._ready_fd = -1
        message: dict[str, Any] = {}
        if data:
            try:
                message = json.loads(data)
            except ValueError:
                message = {"ok": False, "error": data.decode(errors="replace")}
        if not message.get("ok"):
            self.kill()
            status = ExitStatus(self.process.wait(5)) if self.process else None
            error = message.get("error") or (
                f"worker process {status.describe() if status else 'failed'} before it was ready"
            )
            raise WorkerStartError(
                f"worker {self.worker_id} failed to start: {error}",
                {"worker_id": self.worker_id, "adapter": self.adapter,
                 "traceback": message.get("traceback", ""),
                 "adapter_load": message.get("kind") == "adapter_load"},
            )
        self._close_channel()  # a stream to an earlier process must not serve this one
        self.channel = grpc.insecure_channel(
            f"unix:{self.socket_path}",
            options=[
                ("grpc.enable_http_proxy", 0),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self.stub = pb_grpc.AdapterRuntimeStub(self.channel)
        describe = self.stub.Describe(
            pb.DescribeRequest(), timeout=max(1.0, deadline - time.monotonic())
        )
        self.tools = {t.name: t for t in describe.tools}
        self.state = "ready"
        ready_ms = (time.time() - self.started_at) * 1000
        telemetry.emit(("snakepit", "pool", "worker_ready"), {"duration_ms": ready_ms},
                       self._labels())

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the runtime's process group (it and anything it spawned)."""
        if self.process is not None:
            processes.send(self.process, sig, group=True)

    def kill(self) -> None:
        """SIGKILL the runtime and its children at once."""
        if self.process is not None:
            processes.kill(self.process, group=True)
        self._close_channel()

    def stop(self, grace: float, reason: str = "stopped") -> None:
        """SIGTERM the runtime's group, wait up to ``grace`` seconds, then SIGKILL it."""
        self.state = "stopped"
        if self.process is not None:
            [ending] = processes.terminate_all(
                [self.process], grace, group=True, kill_wait=KILL_WAIT_S)
            if ending.killed:
                log.warning("worker %s ignored SIGTERM for %.1fs; killed it",
                            self.worker_id, grace)
            uptime_ms = (time.time() - self.started_at) * 1000
            telemetry.emit(("snakepit", "worker", "terminated"), {"uptime_ms": uptime_ms},
                           {**self._labels(), "reason": reason})
        self._close_channel()

    def call_stream(self) -> CallStream:
        """The open connection to this runtime's call socket, opened at the first call (and
        again after it broke). Raises ValueError when its channel was closed (being
        replaced), StreamError (UNAVAILABLE) when the runtime cannot be reached."""
        with self._calls_lock:
            stream = self._calls
            if stream is None or stream.broken:
                if self.stub is None or self.channel is None:
                    raise ValueError(f"worker {self.worker_id} has no channel")
                stream = self._calls = CallStream(self.calls_path, self.worker_id,
                                                  self.capacity)
            return stream

    def open_stream(
        self, request: pb.ExecuteRequest, timeout: float,
        metadata: list[tuple[str, str]] | None = None,
    ) -> ChunkStream:
        """A streamed call on a connection of its own to this runtime's call socket. Raises
        ValueError when its channel was closed (being replaced), StreamError (UNAVAILABLE)
        when the runtime cannot be reached."""
        if self.stub is None or self.channel is None:
            raise ValueError(f"worker {self.worker_id} has no channel")
        return ChunkStream(self.calls_path, request, timeout, metadata)

    def _close_channel(self) -> None:
        with self._calls_lock:
            stream, self._calls = self._calls, None
        if stream is not None:
            stream.close()
        if self.channel is not None:
            self.channel.close()
        self.channel = None

    def exit_status(self, wait: float = 0.0) -> ExitStatus | None:
        """The exit status if the process has ended (waiting up to ``wait`` seconds)."""
        if self.process is None:
            return None
        try:
            code = self.process.wait(wait) if wait > 0 else self.process.poll()
        except subprocess.TimeoutExpired:
            return None
        return None if code is None else ExitStatus(code)

    def snapshot(self) -> dict[str, Any]:
        """What the node publishes about this worker."""
        return {
            "id": self.worker_id,
            "pid": self.pid,
            "state": self.state,
            "capacity": self.capacity,
            "inflight": self.inflight,
            "requests": self.requests,
            "started_at": self.started_at,
            "generation": self.generation,
        }


#: Settings a runtime applies itself, passed in its environment (it reads no config file
#: the node was not started with, and a node may have been configured in code).
RUNTIME_SETTINGS = (
    "zero_copy_threshold_bytes",
    "zero_copy_ttl_ms",
    "zero_copy_transport",
    "zero_copy_flight_host",
    "zero_copy_arena_idle_ms",
)


def settings_env(settings: Any) -> dict[str, str]:
    """``SNAKEPIT_*`` variables for the settings a runtime applies itself."""
    return {f"SNAKEPIT_{name.upper()}": str(getattr(settings, name)) for name in RUNTIME_SETTINGS}


def worker_env(base: dict[str, str], profile: str, extra: dict[str, str]) -> dict[str, str]:
    """The environment a runtime starts with: the node's, thread caps, then pool extras."""
    env = dict(base)
    if profile == "process":
        for name in THREAD_ENV_VARS:
            env.setdefault(name, "1")
    env.update(extra)
    # The node's working directory is importable, like ``python -m`` would make it.
    cwd = os.getcwd()
    path = env.get("PYTHONPATH", "")
    if cwd not in path.split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, path) if p)
    return env


