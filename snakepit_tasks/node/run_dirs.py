"""Run directories: where one run of a node keeps its workers' unix sockets.

A run directory is ``<data_dir>/run/<instance>/<run id>`` (mode 0700): under the node's data
dir (by default per user, ``~/.local/state/snakepit-tasks``), one folder per instance (under
``<tmp>/snakepit-<uid>/<hash of data_dir>/`` instead when the data dir's path is too long for
unix socket paths). It holds
``node.json`` (the node's pid and start time, written first) and the sockets. The node removes
it when it stops; a starting node removes those of earlier runs whose node is gone (killed,
crashed, failed to start), as the orphan sweep does for their processes. A directory whose
node still runs (same pid and start time) is never touched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..errors import ConfigurationError
from ..processes import ProcessIdentity
from .registry import file_part

log = logging.getLogger("snakepit_tasks.node")

#: The file in a run directory that names its node.
OWNER_FILE = "node.json"
#: A run directory without a readable owner file is left alone this long (seconds): its node
#: may be between creating it and writing the file.
UNCLAIMED_GRACE_S = 60.0
#: The longest unix socket path Linux accepts (``sun_path`` is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107


#: Room a run directory must leave for its id and the longest socket name in it.
SOCKET_ROOM = len("/xxxxxxxxxx/w9999.sock")


def runs_root(data_dir: str | os.PathLike[str], instance_name: str) -> Path:
    """The folder holding the run directories of one instance: under the data dir, or, when
    that path is too long for unix sockets, under a short per-user folder of the temporary
    directory named after the data dir (so every node of the instance still finds it)."""
    root = Path(data_dir) / "run" / file_part(instance_name)
    if len(os.fsencode(root)) + SOCKET_ROOM <= MAX_SOCKET_PATH:
        return root
    digest = hashlib.sha1(os.fsencode(Path(data_dir).resolve())).hexdigest()[:12]
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"snakepit-{uid}" / digest / file_part(instance_name)


def run_dir(data_dir: str | os.PathLike[str], instance_name: str, run_id: str) -> Path:
    """The run directory of run ``run_id`` (not created)."""
    return runs_root(data_dir, instance_name) / file_part(run_id)


def check_socket_room(path: Path, longest_name: str) -> None:
    """ConfigurationError unless ``path/longest_name`` fits in a unix socket address."""
    full = len(os.fsencode(path / longest_name))
    if full > MAX_SOCKET_PATH:
        raise ConfigurationError(
            f"the run directory {str(path)!r} is too long for unix socket paths ({full} "
            f"bytes, the limit is {MAX_SOCKET_PATH}); set data_dir (SNAKEPIT_DATA_DIR) to a "
            "shorter path",
            {"path": str(path)},
        )


def create(path: Path) -> None:
    """Make the run directory (mode 0700) and record this process as its node."""
    try:
        path.mkdir(parents=True, mode=0o700, exist_ok=True)
        me = ProcessIdentity.of(os.getpid())
        owner = {"pid": os.getpid(), "start_time": me.start_time if me else 0}
        (path / OWNER_FILE).write_text(json.dumps(owner))
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the run directory {str(path)!r} ({exc.strerror or exc}); set "
            "data_dir (SNAKEPIT_DATA_DIR) to a writable directory",
            {"path": str(path)},
        ) from exc


def remove(path: Path) -> None:
    """Remove a run directory and everything in it (nothing happens if it is gone)."""
    shutil.rmtree(path, ignore_errors=True)


def _owner_runs(path: Path) -> bool | None:
    """Whether the node that made ``path`` still runs; None when the owner file is missing
    or unreadable."""
    try:
        owner = json.loads((path / OWNER_FILE).read_text())
        pid, start = int(owner["pid"]), int(owner["start_time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return start != 0 and ProcessIdentity(pid, start).is_running()


def sweep(root: Path, keep: Path | None = None) -> list[Path]:
    """Remove the run directories under ``root`` whose node is gone (all but ``keep`` and
    those of live nodes); return the ones removed."""
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    removed = []
    for path in entries:
        if path == keep or not path.is_dir() or path.is_symlink():
            continue
        alive = _owner_runs(path)
        if alive is None:
            try:
                alive = time.time() - path.stat().st_mtime < UNCLAIMED_GRACE_S
            except OSError:
                continue
        if not alive:
            remove(path)
            removed.append(path)
    if removed:
        log.info("removed %d run directory(ies) of gone nodes under %s", len(removed), root)
    return removed
