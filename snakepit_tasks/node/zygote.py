"""The node's side of the zygote (:mod:`snakepit_tasks.bridge.zygote`): start it, have it fork
workers, and learn how they end."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Any

from .. import processes
from . import output

log = logging.getLogger("snakepit_tasks.node")

#: The module the zygote runs (``python -m``).
ZYGOTE_MODULE = "snakepit_tasks.bridge.zygote"
#: How long the zygote may take to import the runtime, and to answer a spawn (s).
READY_TIMEOUT_S = 30.0
SPAWN_TIMEOUT_S = 10.0
#: After the zygote died, how long its workers may take to die with it (s).
ORPHAN_WAIT_S = 5.0
#: Bytes of command line reserved for the workers' (the zygote's ``--reserve``): a forked
#: worker can only show a command line as long as the zygote's own. Defined here, not in
#: bridge.zygote, so that a node starts its zygote without importing the runtime itself.
CMDLINE_RESERVE = 4096


class ZygoteUnavailable(RuntimeError):
    """The zygote could not start, or stopped answering: start the worker the plain way."""


class ForkedProcess:
    """A worker the zygote forked, as much of a :class:`subprocess.Popen` as a node uses: its
    pid, its output pipes, :meth:`poll` and :meth:`wait`. Its exit status comes from the
    zygote, which reaps it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.stdout: IO[bytes] | None = None  # set by Zygote.spawn
        self.stderr: IO[bytes] | None = None
        self.returncode: int | None = None
        self._ended = threading.Event()
        self._started = processes.process_start_time(pid)

    def poll(self) -> int | None:
        """The exit status once the worker has ended, else None."""
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Block until the worker has ended (TimeoutExpired after ``timeout`` seconds)."""
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def ended(self, returncode: int) -> None:
        """Record how the worker ended (called by the zygote's reader)."""
        self.returncode = returncode
        self._ended.set()

    def still_runs(self) -> bool:
        """Whether this very process still runs (the zygote's report aside)."""
        return self._started is not None and (
            processes.process_start_time(self.pid) == self._started)


class Zygote:
    """One zygote process of a node, started on first use (:meth:`spawn`) and again after it
    died; :meth:`stop` ends it."""

    def __init__(self, env: dict[str, str], *, name: str, run_id: str = "",
                 instance: str = "") -> None:
        self.env = env
        self.name = name
        self.run_id = run_id
        self.instance = instance
        self.process: subprocess.Popen[bytes] | None = None
        self._forwarded: subprocess.Popen[bytes] | None = None  # whose output is logged
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()  # one spawn at a time; start/stop
        self._cond = threading.Condition()
        self._ready = False
        self._replies: dict[int, dict[str, Any]] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._next_id = 0
        self._gone = True
        self._failed = ""  # why a zygote ended before it was ready: not tried again
        self._stopping = False

    # -- life cycle ----------------------------------------------------------------------
    def start(self, *, forward: bool = True) -> None:
        """Start the zygote process (it imports the runtime meanwhile; :meth:`spawn` waits
        for it). Does nothing while one runs. ``forward=False``: its output waits in its pipes
        until :meth:`forward_output` (a node starts it before it knows its own name)."""
        with self._lock:
            self._start(forward=forward)

    def forward_output(self) -> None:
        """Log the running zygote's output, tagged with :attr:`name` (once per process)."""
        with self._lock:
            self._forward()

    def _forward(self) -> None:
        process = self.process
        if process is None or process is self._forwarded:
            return
        self._forwarded = process
        assert process.stdout is not None and process.stderr is not None
        output.forward(process.stdout, f"{self.name}/zygote", "stdout")
        output.forward(process.stderr, f"{self.name}/zygote", "stderr")

    def _start(self, *, forward: bool = True) -> None:
        if self._failed:
            raise ZygoteUnavailable(self._failed)
        if not self._gone:
            return
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except (OSError, AttributeError) as exc:  # no SOCK_SEQPACKET (macOS)
            raise ZygoteUnavailable(f"cannot start the zygote: {exc}") from exc
        cmd = [sys.executable, "-m", ZYGOTE_MODULE,
               "--control-fd", str(theirs.fileno()), "--parent-pid", str(os.getpid()),
               "--instance", self.instance, f"--reserve={'.' * CMDLINE_RESERVE}"]
        if self.run_id:
            cmd += ["--run-id", self.run_id]
        try:
            self.process = subprocess.Popen(
                cmd, env=self.env, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            ours.close()
            raise ZygoteUnavailable(f"cannot start the zygote: {exc}") from exc
        finally:
            theirs.close()
        if forward:
            self._forward()
        with self._cond:
            self._sock, self._ready, self._gone = ours, False, False
        threading.Thread(target=self._read, args=(ours, self.process), daemon=True,
                         name=f"zygote-{self.name}").start()

    def stop(self, grace: float = 1.0) -> None:
        """End the zygote (its workers are stopped first: a worker dies with its zygote)."""
        with self._lock:
            self._stopping = True
            sock, process = self._sock, self.process
            if sock is not None:
                try:  # the zygote sees the end of its socket and exits (so does our reader)
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if process is not None:
                try:
                    process.wait(grace)
                except subprocess.TimeoutExpired:
                    processes.terminate(process, grace, group=True, kill_wait=2.0)

    # -- forking workers -----------------------------------------------------------------
    def spawn(self, argv: list[str], env: dict[str, str], ready_fd: int) -> ForkedProcess:
        """Fork a worker running the runtime with ``argv``, ``env`` and ``ready_fd`` as its
        ready pipe; raises ZygoteUnavailable when the zygote cannot do it."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            with self._lock:
                self._start()
                with self._cond:
                    if not self._cond.wait_for(lambda: self._ready or self._gone,
                                               READY_TIMEOUT_S) or self._gone:
                        self._failed = "the zygote did not start (see its log lines above)"
                        raise ZygoteUnavailable(self._failed)
                    self._next_id += 1
                    request_id = self._next_id
                    sock = self._sock
                assert sock is not None
                message = json.dumps({"spawn": request_id, "argv": argv, "env": env}).encode()
                try:
                    socket.send_fds(sock, [message], [ready_fd, out_w, err_w])
                except OSError as exc:
                    raise ZygoteUnavailable(f"the zygote stopped answering: {exc}") from exc
            reply = self._reply(request_id)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        if "pid" not in reply:
            os.close(out_r)
            os.close(err_r)
            raise ZygoteUnavailable(f"the zygote could not fork: {reply.get('error')}")
        child: ForkedProcess = reply["child"]
        child.stdout, child.stderr = os.fdopen(out_r, "rb"), os.fdopen(err_r, "rb")
        return child

    def _reply(self, request_id: int) -> dict[str, Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: request_id in self._replies or self._gone,
                                       SPAWN_TIMEOUT_S):
                raise ZygoteUnavailable("the zygote did not answer")
            if request_id not in self._replies:
                raise ZygoteUnavailable("the zygote died")
            return self._replies.pop(request_id)

    # -- what the zygote says ------------------------------------------------------------
    def _read(self, sock: socket.socket, process: subprocess.Popen[bytes]) -> None:
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                self._heard(json.loads(data))
        except (OSError, ValueError):
            pass
        self._died(sock, process)

    def _heard(self, message: dict[str, Any]) -> None:
        with self._cond:
            if "ready" in message:
                self._ready = True
            elif "spawned" in message:
                if "pid" in message:  # known before its exit can be reported
                    child = message["child"] = ForkedProcess(message["pid"])
                    self._children[child.pid] = child
                self._replies[message["spawned"]] = message
            elif "exited" in message:
                ended = self._children.pop(message["exited"], None)
                if ended is not None:
                    ended.ended(int(message["returncode"]))
            self._cond.notify_all()

    def _died(self, sock: socket.socket, process: subprocess.Popen[bytes]) -> None:
        """The zygote is gone: its workers die with it (parent-death signal); report them
        as killed once they have."""
        with self._cond:
            if self._sock is sock:
                self._gone, self._sock = True, None
            children, self._children = list(self._children.values()), {}
            self._cond.notify_all()
        sock.close()
        try:
            code = process.wait(ORPHAN_WAIT_S)
        except subprocess.TimeoutExpired:
            code = None
        if code not in (0, None) and not self._stopping:
            log.warning("the zygote of %s %s; workers start afresh from a new one",
                        self.name, processes.ExitStatus(code).describe())
        deadline = time.monotonic() + ORPHAN_WAIT_S
        for child in children:
            while child.still_runs() and time.monotonic() < deadline:
                time.sleep(0.02)
            if child.still_runs():
                processes.kill(child.pid, group=True)
            child.ended(-9)

