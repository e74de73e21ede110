"""snakepit_tasks.node.worker: a real adapter runtime process on a real unix socket (no Redis)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator

import pytest

from snakepit_tasks._proto import bridge_pb2 as pb
from snakepit_tasks.node.worker import (
    THREAD_ENV_VARS,
    AdapterWorker,
    ExitStatus,
    WorkerStartError,
    worker_env,
)


@pytest.fixture
def run_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="sp-", dir="/tmp")  # short: unix socket paths are limited
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_worker(run_dir: str, adapter: str, capacity: int = 1) -> AdapterWorker:
    env = worker_env(dict(os.environ), "process", {})
    return AdapterWorker("unit@host/0", 0, adapter, capacity, run_dir, "run-1", "unit", env)


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_worker_serves_on_a_private_socket_and_stops(run_dir: str) -> None:
    worker = make_worker(run_dir, "adapters.showcase:ShowcaseAdapter")
    worker.spawn()
    try:
        assert worker.state == "starting"
        worker.wait_ready(10)
        assert worker.state == "ready"
        mode = os.stat(worker.socket_path).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
        assert worker.stub is not None
        pong = worker.stub.Ping(pb.PingRequest(), timeout=5)
        assert pong.message == "pong"
        assert pong.pid == worker.pid
        assert pong.worker_id == "unit@host/0"
        assert "add" in worker.tools and worker.tools["stream_count"].supports_streaming
        resp = worker.stub.Execute(
            pb.ExecuteRequest(tool="add", args=pb.Payload(data=b'{"a":2,"b":5}', encoding="json")),
            timeout=5,
        )
        assert resp.ok and json.loads(resp.result.data) == 7
        snap = worker.snapshot()
        assert snap["id"] == "unit@host/0" and snap["pid"] == worker.pid
        assert snap["state"] == "ready" and snap["generation"] == 1
    finally:
        pid = worker.pid
        worker.stop(1.0)
    assert pid is not None
    assert worker.state == "stopped"
    assert worker.channel is None
    assert not pid_exists(pid)
    status = worker.exit_status()
    assert status is not None
    assert status.returncode == 0, status.describe()  # SIGTERM is a graceful exit


def test_failing_adapter_names_the_module(run_dir: str) -> None:
    worker = make_worker(run_dir, "no_such_module_xyz:Adapter")
    worker.spawn()
    with pytest.raises(WorkerStartError, match="no_such_module_xyz") as info:
        worker.wait_ready(10)
    assert info.value.details["adapter"] == "no_such_module_xyz:Adapter"
    assert "ModuleNotFoundError" in info.value.details["traceback"]
    assert worker.pid is not None and not pid_exists(worker.pid)
    status = worker.exit_status(2)
    assert status is not None and status.returncode != 0


def test_thread_profile_refuses_unsafe_adapter(run_dir: str) -> None:
    worker = make_worker(run_dir, "adapters.template:TemplateAdapter", capacity=4)
    worker.spawn()
    with pytest.raises(WorkerStartError, match="thread-safe"):
        worker.wait_ready(10)


def test_exit_status_descriptions() -> None:
    assert ExitStatus(0).signal is None
    assert ExitStatus(3).describe() == "exited with code 3"
    assert ExitStatus(-9).signal == "SIGKILL"
    assert ExitStatus(-9).describe() == "killed by SIGKILL"


def test_worker_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.chdir(str(tmp_path))
    env = worker_env({"PATH": "/bin", "OMP_NUM_THREADS": "8"}, "process", {"EXTRA": "1"})
    assert env["OMP_NUM_THREADS"] == "8"  # an explicit value is kept
    for name in THREAD_ENV_VARS[1:]:
        assert env[name] == "1"
    assert env["EXTRA"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path)
    threaded = worker_env({"PYTHONPATH": "/x"}, "thread", {})
    assert "OPENBLAS_NUM_THREADS" not in threaded
    assert threaded["PYTHONPATH"] == os.pathsep.join([str(tmp_path), "/x"])
    again = worker_env({"PYTHONPATH": threaded["PYTHONPATH"]}, "thread", {})
    assert again["PYTHONPATH"] == threaded["PYTHONPATH"]
