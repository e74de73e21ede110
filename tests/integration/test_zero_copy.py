"""Zero-copy through the real stack: a 256 MiB Arrow table returned by a tool and read by the
caller on the same host without a copy (memory accounting and buffer addresses, never
timing) and through Arrow Flight; a numpy array as an argument; release and expiry leave no
memory behind, also when the caller or the node is SIGKILLed. One large table at a time."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from helpers import REPO, subprocess_env, wait_until

import snakepit_tasks as sp
from snakepit_tasks import errors
from snakepit_tasks.zero_copy import process

pytestmark = pytest.mark.timeout(240)

DATA = "adapters.data:DataAdapter"
MIB = 2**20
TABLE_MIB = 256
MEMFD = "/memfd:snakepit-zc"


def status(pid: int | str, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def memfds(pid: int) -> int:
    """Snakepit shared-memory segments process ``pid`` holds open (distinct files)."""
    found = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for name in names:
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith(MEMFD):
                found.add(os.stat(f"/proc/{pid}/fd/{name}").st_ino)
        except OSError:
            pass
    return len(found)


def dev_shm() -> set[str]:
    return set(os.listdir("/dev/shm"))


def start(node, **env: str):  # type: ignore[no-untyped-def]
    settings = {"SNAKEPIT_ZERO_COPY_ARENA_IDLE_MS": "300", **env}
    return node(adapter=DATA, env=settings)


def expected_sum(mib: int) -> int:
    rows = mib * MIB // 8
    return rows * (rows - 1) // 2


def test_a_256_mib_table_reaches_the_caller_without_a_copy(node):
    shm_before = dev_shm()
    n = start(node)
    [runtime] = n.worker_pids()
    anon_before = status("self", "RssAnon")
    table = sp.execute("make_table", {"mib": TABLE_MIB}, pool=n.pool, app=n.app)
    assert isinstance(table, pa.Table)
    assert table.num_rows == TABLE_MIB * MIB // 8
    assert sp.zero_copy.is_zero_copy(table)
    # Every buffer of the table lies inside the mapping of the runtime's segment ...
    start_addr, end_addr = sp.zero_copy.mapping_of(table).address_range()
    for chunk in table.column("n").chunks:
        data = chunk.buffers()[1]
        assert start_addr <= data.address and data.address + data.size <= end_addr
    # ... and reading all of it adds no private memory to this process (no copy was made).
    assert pc.sum(table.column("n")).as_py() == expected_sum(TABLE_MIB)
    growth = status("self", "RssAnon") - anon_before
    assert growth < 32 * MIB, f"the caller's private memory grew by {growth / MIB:.0f} MiB"
    assert memfds(runtime) == 1
    # Released: the runtime keeps the pre-faulted segment a moment for reuse, then frees it.
    assert sp.zero_copy.release(table) == 1
    assert not sp.zero_copy.is_zero_copy(table)
    del table, chunk, data
    gc.collect()
    wait_until(lambda: memfds(runtime) == 0, timeout=15, message="the segment freed")
    assert dev_shm() - shm_before == set(), "nothing is ever named in /dev/shm"


def test_release_lets_the_next_transfer_reuse_the_segment(node):
    n = start(node, SNAKEPIT_ZERO_COPY_ARENA_IDLE_MS="60000")
    [runtime] = n.worker_pids()
    for _ in range(3):
        with sp.zero_copy.hold(sp.execute("make_table", {"mib": 16}, pool=n.pool,
                                          app=n.app)) as table:
            assert table.num_rows == 2 * MIB
            assert sp.zero_copy.is_zero_copy(table)
        del table
        assert memfds(runtime) == 1, "one segment, reused by each transfer"


def test_a_256_mib_table_through_arrow_flight(node, make_app):
    n = start(node)
    [runtime] = n.worker_pids()
    app = make_app(n.table, zero_copy_transport="flight")
    warm = sp.execute("make_table", {"mib": 2}, pool=n.pool, app=app)  # starts the server
    assert isinstance(warm, pa.Table) and not sp.zero_copy.is_zero_copy(warm)
    wait_until(lambda: memfds(runtime) == 0, timeout=15, message="the warm-up segment freed")
    node_before = status(n.pid, "VmRSS")
    table = sp.execute("make_table", {"mib": TABLE_MIB}, pool=n.pool, app=app)
    assert isinstance(table, pa.Table)
    assert not sp.zero_copy.is_zero_copy(table), "fetched through Flight: a copy of its own"
    assert pc.sum(table.column("n")).as_py() == expected_sum(TABLE_MIB)
    del table
    gc.collect()
    # The node only mapped the segment while it streamed it; the runtime frees it after.
    wait_until(lambda: memfds(runtime) == 0, timeout=15, message="the segment freed")
    growth = status(n.pid, "VmRSS") - node_before
    assert growth < 48 * MIB, f"the node kept {growth / MIB:.0f} MiB after the transfer"


def test_a_numpy_argument_above_the_threshold_travels_as_a_handle(node):
    n = start(node)
    x = np.arange(2 * MIB, dtype=np.float64).reshape(2048, 1024)  # 16 MiB
    got = sp.execute("describe", {"x": x}, pool=n.pool, app=n.app)
    assert got == {**got, "type": "ndarray", "shape": [2048, 1024], "dtype": "float64",
                   "sum": float(x.sum()), "writeable": False}
    assert got["shared"] is True, "the runtime read the caller's memory, mapped"
    # The runtime released it after the call: this process's segment is free for reuse.
    wait_until(lambda: process.arena().stats()["used"] == 0, timeout=10,
               message="the argument released by the runtime")
    small = sp.execute("describe", {"x": np.ones((4, 4))}, pool=n.pool, app=n.app)
    assert small["shape"] == [4, 4] and small["sum"] == 16.0 and small["shared"] is False
    # A table argument, and an array coming back: the same API both ways.
    back = sp.execute("echo", {"x": x}, pool=n.pool, app=n.app)
    assert isinstance(back, np.ndarray) and back.shape == x.shape and back.sum() == x.sum()
    sp.zero_copy.release(back)
    table = pa.table({"n": np.arange(MIB, dtype=np.int64)})
    info = sp.execute("describe", {"x": table}, pool=n.pool, app=n.app)
    assert info["type"] == "Table" and info["sum"] == MIB * (MIB - 1) // 2 and info["shared"]


def test_expiry_frees_memory_and_a_late_reader_keeps_valid_data(node):
    n = start(node, SNAKEPIT_ZERO_COPY_TTL_MS="1500")
    [runtime] = n.worker_pids()
    table = sp.execute("make_table", {"mib": 32}, pool=n.pool, app=n.app)
    assert memfds(runtime) == 1
    # Not released: the runtime retires the segment when the TTL passes ...
    wait_until(lambda: memfds(runtime) == 0, timeout=15, message="the expired segment closed")
    # ... and this reader, which still maps it, reads the same data (never another's).
    again = sp.execute("make_table", {"mib": 32, "columns": 2}, pool=n.pool, app=n.app)
    assert table.column_names == ["n"] and pc.sum(table.column("n")).as_py() == expected_sum(32)
    sp.zero_copy.release(again)


CALLER = textwrap.dedent("""
    import sys, time
    import pyarrow.compute as pc
    import snakepit_tasks as sp
    app = sp.configure()
    table = sp.execute("make_table", {"mib": 64}, pool=sys.argv[1], app=app)
    pc.sum(table.column("n"))  # every page touched: mapped in this process
    print("mapped", flush=True)
    time.sleep(300)
""")


def test_sigkill_of_the_caller_leaves_nothing_behind(node, pids):
    shm_before = dev_shm()
    n = start(node, SNAKEPIT_ZERO_COPY_TTL_MS="2000")
    [runtime] = n.worker_pids()
    # Warm up: the node loads pyarrow and starts its Flight server with the first handle.
    sp.zero_copy.release(sp.execute("make_table", {"mib": 2}, pool=n.pool, app=n.app))
    wait_until(lambda: memfds(runtime) == 0, timeout=15, message="the warm-up segment freed")
    node_before = status(n.pid, "VmRSS")
    env = subprocess_env(n.redis_url, [n.table])
    caller = subprocess.Popen([sys.executable, "-c", CALLER, n.pool], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pids.track(caller.pid)
    try:
        line = caller.stdout.readline() if caller.stdout else b""
        assert line.strip() == b"mapped", line + (caller.stdout.read() if caller.stdout else b"")
        assert memfds(runtime) == 1
        os.kill(caller.pid, signal.SIGKILL)
        caller.wait(10)
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait(10)
        if caller.stdout:
            caller.stdout.close()
    wait_until(lambda: memfds(runtime) == 0, timeout=15, message="the orphaned value expired")
    assert dev_shm() - shm_before == set()
    assert status(n.pid, "VmRSS") - node_before < 16 * MIB


def test_sigkill_of_the_node_leaves_nothing_and_mapped_values_stay_valid(node):
    shm_before = dev_shm()
    n = start(node)
    [runtime] = n.worker_pids()
    table = sp.execute("make_table", {"mib": 32}, pool=n.pool, app=n.app)
    os.kill(n.pid, signal.SIGKILL)
    n.proc.wait(10)
    wait_until(lambda: not os.path.exists(f"/proc/{runtime}/fd"), timeout=15,
               message="the runtime gone with its node")
    # The kernel keeps the memory while this process maps it; the data is intact.
    assert pc.sum(table.column("n")).as_py() == expected_sum(32)
    del table
    gc.collect()
    assert dev_shm() - shm_before == set()
    with pytest.raises(errors.SnakepitError):
        sp.execute("make_table", {"mib": 1}, pool=n.pool, app=n.app, timeout=2)


def test_a_handle_whose_owner_is_gone_is_a_clear_error(node):
    n = start(node)
    wire = {"__snakepit_zero_copy__": 1, "id": "0" * 32, "kind": "table", "size": 10,
            "expires_at": 0.0, "owner": "runtime x", "host": sp.zero_copy.host_id(),
            "pid": 999_999_999, "fd": 3}
    with pytest.raises(errors.SerializationError, match="is gone"):
        sp.zero_copy.materialize(wire)
    # The same handle as an argument: the runtime cannot map it and says why.
    with pytest.raises(errors.SerializationError, match="is gone"):
        sp.execute("describe", {"x": wire}, pool=n.pool, app=n.app)
    with pytest.raises(errors.SerializationError, match="zero_copy_transport='flight'"):
        sp.zero_copy.materialize(wire, "flight")
