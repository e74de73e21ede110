"""snakepit_tasks.node.run_dirs: where a run's sockets live, and the sweep of dead runs'."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from snakepit_tasks.errors import ConfigurationError
from snakepit_tasks.node import run_dirs
from snakepit_tasks.processes import process_start_time


def test_run_dirs_live_under_the_data_dir_per_instance(tmp_path: Path) -> None:
    path = run_dirs.run_dir(tmp_path, "", "abc1234")
    assert path == tmp_path / "run" / "default" / "abc1234"
    assert run_dirs.run_dir(tmp_path, "blue", "abc1234").parent == tmp_path / "run" / "blue"


def test_create_records_this_process_and_is_private(tmp_path: Path) -> None:
    path = run_dirs.run_dir(tmp_path, "", "r1")
    run_dirs.create(path)
    owner = json.loads((path / run_dirs.OWNER_FILE).read_text())
    assert owner == {"pid": os.getpid(), "start_time": process_start_time(os.getpid())}
    assert path.stat().st_mode & 0o777 == 0o700
    run_dirs.remove(path)
    assert not path.exists()
    run_dirs.remove(path)  # gone already: nothing happens


def _fake_run(root: Path, name: str, pid: int, start_time: int) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / run_dirs.OWNER_FILE).write_text(json.dumps({"pid": pid, "start_time": start_time}))
    (path / "w0.sock").write_text("")  # a stale socket file
    return path


def test_sweep_removes_only_the_directories_of_gone_nodes(tmp_path: Path) -> None:
    root = tmp_path / "run" / "default"
    me = os.getpid()
    alive = _fake_run(root, "alive", me, process_start_time(me) or 0)
    reused_pid = _fake_run(root, "reused", me, (process_start_time(me) or 0) + 1)
    gone = _fake_run(root, "gone", 2**22 + 7, 12345)
    mine = _fake_run(root, "mine", 2**22 + 8, 1)
    removed = run_dirs.sweep(root, keep=mine)
    assert sorted(removed) == sorted([reused_pid, gone])
    assert alive.is_dir() and mine.is_dir()
    assert not reused_pid.exists() and not gone.exists()


def test_sweep_leaves_a_fresh_directory_without_owner_alone(tmp_path: Path) -> None:
    root = tmp_path / "run" / "default"
    fresh = root / "fresh"
    fresh.mkdir(parents=True)
    old = root / "old"
    old.mkdir()
    past = time.time() - run_dirs.UNCLAIMED_GRACE_S - 10
    os.utime(old, (past, past))
    assert run_dirs.sweep(root) == [old]
    assert fresh.is_dir()


def test_sweep_of_a_missing_root_finds_nothing(tmp_path: Path) -> None:
    assert run_dirs.sweep(tmp_path / "nothing") == []


def test_a_data_dir_too_long_for_sockets_moves_run_dirs_to_a_short_folder(tmp_path: Path) -> None:
    long_dir = tmp_path / ("x" * 120)
    path = run_dirs.run_dir(long_dir, "inst", "r1")
    assert not str(path).startswith(str(long_dir))
    run_dirs.check_socket_room(path, "w99.sock")  # fits
    assert path == run_dirs.run_dir(long_dir, "inst", "r1")  # the same for every node
    assert run_dirs.run_dir(tmp_path / "y", "inst", "r1") == tmp_path / "y" / "run" / "inst" / "r1"
    with pytest.raises(ConfigurationError, match="too long for unix socket paths"):
        run_dirs.check_socket_room(tmp_path / ("z" * 120), "w0.sock")
