"""No litter: a node keeps its sockets in a run directory under data_dir, removes it when it
stops, and a starting node removes those that failed or killed nodes left behind."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from helpers import wait_until

from snakepit_tasks import processes
from snakepit_tasks.node import run_dirs

pytestmark = pytest.mark.timeout(180)


def run_dirs_under(data_dir: Path) -> list[Path]:
    """The run directories that exist under ``data_dir`` (every instance)."""
    root = run_dirs.runs_root(data_dir, "").parent  # (a short temp folder if data_dir is long)
    return sorted(p for inst in root.glob("*") for p in inst.glob("*")) if root.is_dir() else []


def test_a_failed_start_leaves_no_run_directory(node, tmp_path):
    data = tmp_path / "data"
    n = node(adapter="no_such_module_for_rundirs:Nope", wait=False,
             env={"SNAKEPIT_DATA_DIR": str(data)})
    assert n.proc.wait(120) == processes.EXIT_ADAPTER_UNLOADABLE, n.output()
    assert run_dirs_under(data) == [], n.output()


def test_a_killed_nodes_run_directory_goes_with_the_next_start(node, tmp_path):
    data = tmp_path / "data"
    env = {"SNAKEPIT_DATA_DIR": str(data)}
    first = node(pool_size=2, env=env)
    [left] = run_dirs_under(data)
    assert {"w0.sock", "w1.sock", run_dirs.OWNER_FILE} <= set(os.listdir(left))
    for pid in first.worker_pids():
        assert f"--socket {left}/w" in " ".join(processes.process_cmdline(pid) or [])
    first.child_pids()
    os.kill(first.pid, signal.SIGKILL)
    first.proc.wait(30)
    assert run_dirs_under(data) == [left]  # what a killed node leaves, until the next start

    second = node(env=env)
    [kept] = run_dirs_under(data)
    assert kept != left and not left.exists()
    assert second.stop() == 0, second.output()
    wait_until(lambda: run_dirs_under(data) == [], timeout=30,
               message=lambda: f"run directories left after a clean stop: {run_dirs_under(data)}")
    assert run_dirs.runs_root(data, "").parent.is_dir()  # the root stays; nothing below it
