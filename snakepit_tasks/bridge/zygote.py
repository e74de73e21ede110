"""The zygote: a process that imports the adapter runtime once and forks a node's workers.

A fresh ``python -m snakepit_tasks.bridge.runtime`` spends about half a second of CPU on the
interpreter and its imports (gRPC, protobuf, this package) before it serves; N workers started
at once pay it N times over on the same cores. A node starts one zygote per pool
(``worker_start_method = "fork"``, the default); each worker it forks has all of that done and
goes straight to importing its adapter and serving. The adapter itself is imported in the
worker, after the worker's environment (its device, its thread caps) is in place.

The zygote stays single-threaded (nothing it imports starts a thread, so forking is safe), dies
with its node (parent-death signal, and a check of its parent every half second), and exits
when its node closes the control socket. A worker it forks dies with it in turn, so a worker
never outlives its node; its command line reads as a ``snakepit_tasks.bridge.runtime`` started
by that node (``--parent-pid``, ``--run-id``, ``--instance``), for ``ps`` and orphan sweeps.

Protocol, on a ``SOCK_SEQPACKET`` socket pair, one JSON object per packet:

- node → zygote: ``{"spawn": id, "argv": [...], "env": {...}}`` with three file descriptors:
  the worker's ready pipe, stdout and stderr; ``argv`` is the runtime's arguments.
- zygote → node: ``{"ready": pid}`` once; ``{"spawned": id, "pid": pid}`` (or ``"error"``);
  ``{"exited": pid, "returncode": code}`` when a worker ends (negative: killed by a signal).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import sys
import traceback
from typing import Any, NoReturn

from .. import processes
from . import runtime

#: The largest packet the node sends (a worker's arguments and environment).
MAX_REQUEST_BYTES = 1 << 20


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.send(json.dumps(message).encode())


def _reap(sock: socket.socket) -> None:
    """Report every child that has ended."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"exited": pid, "returncode": os.waitstatus_to_exitcode(status)})


def _run_worker(argv: list[str], env: dict[str, str], fds: list[int],
                own: tuple[socket.socket, int, int]) -> NoReturn:
    """In the forked child: become the worker ``argv`` describes, then exit with its code."""
    code = 1
    try:
        sock, wake_r, wake_w = own  # the zygote's control socket and wake-up pipe
        sock.close()
        os.close(wake_r)
        os.close(wake_w)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()  # its own process group: its children die with it
        ready_fd, out_fd, err_fd = fds
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.close(out_fd)
        os.close(err_fd)
        os.environ.clear()
        os.environ.update(env)
        for entry in reversed(env.get("PYTHONPATH", "").split(os.pathsep)):
            if entry and entry not in sys.path:
                sys.path.insert(1, entry)
        args = [*argv, "--ready-fd", str(ready_fd), "--zygote-pid", str(os.getppid())]
        processes.set_cmdline([sys.executable, "-m", runtime.__name__, *args])
        sys.argv = [runtime.__file__ or runtime.__name__, *args]
        code = runtime.main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
    os._exit(code)


def _spawn(request: dict[str, Any], fds: list[int], own: tuple[socket.socket, int, int]) -> None:
    sock = own[0]
    try:
        argv = [str(a) for a in request["argv"]]
        env = {str(k): str(v) for k, v in request["env"].items()}
        if len(fds) != 3:
            raise ValueError(f"expected 3 file descriptors, got {len(fds)}")
        pid = os.fork()
    except Exception as exc:
        for fd in fds:
            os.close(fd)
        _send(sock, {"spawned": request.get("spawn"), "error": f"{type(exc).__name__}: {exc}"})
        return
    if pid == 0:
        _run_worker(argv, env, fds, own)
    for fd in fds:
        os.close(fd)
    _send(sock, {"spawned": request["spawn"], "pid": pid})


def serve(control_fd: int, parent_pid: int) -> int:
    """Fork workers on request until the node closes ``control_fd`` or dies."""
    sock = socket.socket(fileno=control_fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the select below
    own = (sock, wake_r, wake_w)
    _send(sock, {"ready": os.getpid()})
    while True:
        readable, _, _ = select.select([sock.fileno(), wake_r], [], [], 0.5)
        if parent_pid and os.getppid() != parent_pid:
            return 0  # the node is gone
        if wake_r in readable:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
        _reap(sock)
        if sock.fileno() in readable:
            data, fds, _, _ = socket.recv_fds(sock, MAX_REQUEST_BYTES, 3)
            if not data:
                return 0  # the node closed the socket: it is stopping
            try:
                request = json.loads(data)
            except ValueError:
                for fd in fds:
                    os.close(fd)
                _send(sock, {"spawned": None, "error": "request is not JSON"})
                continue
            _spawn(request, fds, own)


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m snakepit_tasks.bridge.zygote``."""
    parser = argparse.ArgumentParser(prog="snakepit_tasks.bridge.zygote")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, default=0)
    # Carried on the command line so orphan sweeps can recognise it (see node.orphans).
    parser.add_argument("--run-id", default="")
    parser.add_argument("--instance", default="")
    # A forked worker can only show a command line as long as the zygote's own: the node
    # passes a long one (see node.zygote.CMDLINE_RESERVE).
    parser.add_argument("--reserve", default="", help="room for the workers' command lines")
    ns = parser.parse_args(argv)
    processes.set_parent_death_signal(signal.SIGKILL)
    if ns.parent_pid and os.getppid() != ns.parent_pid:
        return 0  # the node died before the signal was armed
    processes.set_cmdline([sys.executable, "-m", "snakepit_tasks.bridge.zygote",
                           "--parent-pid", str(ns.parent_pid), "--instance", ns.instance,
                           *(["--run-id", ns.run_id] if ns.run_id else [])])
    try:
        return serve(ns.control_fd, ns.parent_pid)
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the node went away mid-message


if __name__ == "__main__":
    sys.exit(main())
