"""snakepit_tasks.zero_copy: the arena (reuse after release, retirement on expiry, idle
trim), values to Arrow IPC and back without copies, handles on the wire, export decisions
(threshold, inline, results vs arguments), and reading in another process (shared memory
and Arrow Flight), all without a node."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest

from snakepit_tasks import serialization, zero_copy
from snakepit_tasks.errors import ConfigurationError, SerializationError
from snakepit_tasks.zero_copy import Handle, Options, arena, heap, ipc, process
from snakepit_tasks.zero_copy.arena import Arena

MIB = 2**20


def test_released_segments_are_reused_and_expired_ones_retired() -> None:
    a = Arena(idle_ms=60_000)
    first = a.allocate(3 * MIB, ttl_ms=60_000)
    fd, first_id = first.fd, first.handle_id
    assert a.stats()["used"] == 1 and first.capacity == 4 * MIB
    assert a.release(first_id)
    second = a.allocate(2 * MIB, ttl_ms=60_000)
    assert second.fd == fd, "a released segment is reused (already faulted in)"
    assert a.get(second.handle_id) is second and a.get(first_id) is None
    big = a.allocate(64 * MIB, ttl_ms=1)
    time.sleep(0.01)
    assert a.get(big.handle_id) is None
    stats = a.stats()  # the expired one is closed, never reused
    assert stats["used"] == 1 and stats["free"] == 0
    a.close()


def test_free_segments_are_closed_once_idle() -> None:
    a = Arena(idle_ms=50)
    segment = a.allocate(MIB, ttl_ms=60_000)
    a.release(segment.handle_id)
    assert a.stats()["free"] == 1
    time.sleep(0.1)
    assert a.stats() == {"used": 0, "used_bytes": 0, "free": 0, "free_bytes": 0}


def test_a_free_segment_much_larger_than_needed_is_not_taken() -> None:
    a = Arena()
    big = a.allocate(64 * MIB, ttl_ms=60_000)
    a.release(big.handle_id)
    small = a.allocate(MIB, ttl_ms=60_000)
    assert small.fd != big.fd
    a.close()


@pytest.mark.parametrize("value", [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    np.array([[True, False], [False, True]]),
    np.arange(6, dtype=">i4").reshape(3, 2),
    np.array([1 + 2j, 3 - 4j]),
    np.arange(10)[::3],  # not contiguous
    np.array(7.5),  # zero-dimensional
    np.zeros((0, 3)),
])
def test_arrays_round_trip_through_arrow(value: np.ndarray) -> None:
    sink = pa.BufferOutputStream()
    ipc.write(ipc.to_arrow(value, "ndarray"), sink)
    back = ipc.read(sink.getvalue())
    assert isinstance(back, np.ndarray) and back.dtype == value.dtype
    np.testing.assert_array_equal(back, value)
    assert not back.flags.writeable, "shared memory is read-only: copy it to change it"


def test_tables_and_batches_round_trip_with_their_own_metadata() -> None:
    table = pa.table({"a": [1, 2], "b": ["x", None]}).replace_schema_metadata({"k": "v"})
    for value, kind in ((table, "table"), (table.to_batches()[0], "batch")):
        data = ipc.to_arrow(value, kind)
        assert ipc.stream_size(data) > 0
        sink = pa.BufferOutputStream()
        ipc.write(data, sink)
        back = ipc.read(sink.getvalue())
        assert type(back) is type(value) and back.equals(value)
        assert back.schema.metadata == {b"k": b"v"}


def test_reading_copies_no_buffer() -> None:
    column = np.arange(MIB, dtype=np.int64)
    sink = pa.BufferOutputStream()
    ipc.write(ipc.to_arrow(pa.table({"n": column}), "table"), sink)
    buffer = sink.getvalue()
    table = ipc.read(buffer)
    data = table.column("n").chunks[0].buffers()[1]
    assert buffer.address <= data.address < buffer.address + buffer.size
    array = ipc.read(_stream(np.ones((512, 512))))
    assert isinstance(array, np.ndarray)


def _stream(value: np.ndarray) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    ipc.write(ipc.to_arrow(value, "ndarray"), sink)
    return sink.getvalue()


def test_kinds_are_recognised_without_loading_libraries() -> None:
    assert ipc.kind_of(pa.table({"a": [1]})) == "table"
    assert ipc.kind_of(pa.table({"a": [1]}).to_batches()[0]) == "batch"
    assert ipc.kind_of(np.ones(3)) == "ndarray"
    assert ipc.kind_of(np.array([object()])) is None
    assert ipc.kind_of(pa.array([1])) is None
    assert ipc.kind_of({"a": 1}) is None and ipc.kind_of(b"x") is None


def test_handles_on_the_wire() -> None:
    handle = Handle(id="a" * 32, kind="table", size=10, expires_at=1.5, owner="me", host="h",
                    pid=1, fd=3, flight="grpc://127.0.0.1:1")
    wire = json.loads(json.dumps(handle.to_wire()))
    assert zero_copy.is_handle(wire) and Handle.from_wire(wire) == handle
    no_shm = Handle(id="b" * 32, kind="ndarray", size=1, expires_at=0, owner="x").to_wire()
    assert "pid" not in no_shm and not Handle.from_wire(no_shm).has_shm
    for bad in ({**wire, "__snakepit_zero_copy__": 2}, {**wire, "size": "10"},
                {k: v for k, v in wire.items() if k != "id"}):
        with pytest.raises(ValueError):
            Handle.from_wire(bad)
    with pytest.raises(SerializationError, match="bad zero-copy handle"):
        zero_copy.materialize({**wire, "pid": True})


def test_options_come_from_settings_and_are_checked() -> None:
    from snakepit_tasks.config import load_settings

    settings = load_settings(zero_copy_threshold_bytes=10, zero_copy_transport="flight")
    options = Options.from_settings(settings)
    assert options.threshold_bytes == 10 and options.offers_flight and not options.offers_shm
    with pytest.raises(ConfigurationError, match="zero_copy_transport"):
        load_settings(zero_copy_transport="tcp")
    with pytest.raises(ConfigurationError, match="zero_copy_transport"):
        Options(transport="tcp")


def _export(arguments: bool, threshold: int = MIB) -> process.LazyExport:
    options = Options(threshold_bytes=threshold, transport="shm")
    return process.LazyExport(
        lambda: process.exporter(options, "unit test").begin(arguments=arguments))


def test_small_values_travel_inline_and_plain_messages_make_no_export() -> None:
    plain = _export(arguments=False)
    serialization.encode_result({"a": 1, "b": [1.5, "x"]}, plain.default)
    assert not plain.started
    result = _export(arguments=False)
    data = serialization.encode_result(
        {"t": pa.table({"a": [1, 2]}), "v": np.ones(3)}, result.default)
    assert result.started and not result.used
    value = serialization.decode(data, resolve=zero_copy.resolve)
    assert value["t"].equals(pa.table({"a": [1, 2]}))
    assert value["v"] == [1.0, 1.0, 1.0], "a small array in a result is a list, as before"
    args = _export(arguments=True)
    data = serialization.encode_args({"v": np.ones(3)}, args.default)
    back = serialization.decode(data, resolve=zero_copy.resolve)["v"]
    assert isinstance(back, np.ndarray) and back.tolist() == [1.0, 1.0, 1.0]


def test_an_argument_array_without_the_export_hook_is_still_refused() -> None:
    with pytest.raises(SerializationError, match=r"args\['v'\]"):
        serialization.encode_args({"v": np.ones(3)})


READER = """
import json, sys
import pyarrow.compute as pc
from snakepit_tasks import serialization, zero_copy
value = serialization.decode(sys.stdin.buffer.read(),
                             resolve=lambda v: zero_copy.resolve(v, sys.argv[1]))
table = value["t"]
mapping = zero_copy.mapping_of(table)
inside = False
if mapping is not None:
    lo, hi = mapping.address_range()
    address = table.column("n").chunks[0].buffers()[1].address
    inside = lo <= address < hi
print(json.dumps({"sum": pc.sum(table.column("n")).as_py(), "shape": list(value["a"].shape),
                  "zero_copy": zero_copy.is_zero_copy(table), "inside": inside,
                  "released": zero_copy.release(value)}))
"""


@pytest.mark.parametrize("transport", ["auto", "flight"])
def test_another_process_reads_large_values(transport: str) -> None:
    options = Options(threshold_bytes=MIB, transport="auto", arena_idle_ms=60_000)
    export = process.exporter(options, "unit test").begin(arguments=False)
    rows = 2 * MIB // 8
    data = serialization.encode_result(
        {"t": pa.table({"n": np.arange(rows, dtype=np.int64)}), "a": np.ones((512, 512))},
        export.default)
    assert export.used and len(data) < 2048
    done = subprocess.run([sys.executable, "-c", READER, transport], input=data,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    got = json.loads(done.stdout)
    assert got["sum"] == rows * (rows - 1) // 2 and got["shape"] == [512, 512]
    if transport == "auto":
        assert got == {**got, "zero_copy": True, "inside": True, "released": 2}
    else:
        assert not got["zero_copy"], "fetched through Flight: a copy"
    # Both values were given back (released by the reader, or by the Flight server).
    deadline = time.monotonic() + 10
    while process.arena().stats()["used"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.arena().stats()["used"] == 0


def test_an_unreadable_handle_says_why() -> None:
    segment = process.arena().allocate(100, ttl_ms=60_000)
    wire = Handle(id="c" * 32, kind="table", size=100, expires_at=0, owner="someone",
                  host=zero_copy.host_id(), pid=arena_pid(), fd=segment.fd).to_wire()
    with pytest.raises(SerializationError, match="is gone"):  # the id does not match
        zero_copy.materialize(wire, "shm")
    other_host = {**wire, "host": "elsewhere"}
    with pytest.raises(SerializationError, match="lives on another host"):
        zero_copy.materialize(other_host)
    process.arena().discard(segment.handle_id)


def arena_pid() -> int:
    import os

    return os.getpid()


def test_arena_module_says_whether_the_platform_is_supported() -> None:
    assert arena.supported()


HEAP_READER = r"""
import ctypes, json, resource, sys
from snakepit_tasks.zero_copy import heap

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
BLOCK, COUNT = 4 * 2**20, 32  # 128 MiB in blocks the size of Flight messages

def one_round():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(BLOCK) for _ in range(COUNT)]
    for block in blocks:
        ctypes.memset(block, 1, BLOCK)
    for block in blocks:
        libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

one_round()
plain = one_round()
allowed = heap.retain_for(BLOCK * COUNT)
again = heap.retain_for(BLOCK)
one_round()
print(json.dumps({"plain": plain, "warm": one_round(), "allowed": allowed, "again": again}))
"""


def test_a_flight_reader_keeps_its_heap_warm_for_the_next_fetch() -> None:
    done = subprocess.run([sys.executable, "-c", HEAP_READER], capture_output=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    got = json.loads(done.stdout)
    pages = 128 * MIB // 4096
    if platform.libc_ver()[0] != "glibc":
        assert got["allowed"] == got["again"] == 0, "only glibc's malloc is tuned"
        return
    assert got["allowed"] == 128 * MIB + heap.SLACK_BYTES
    assert got["again"] == got["allowed"], "a smaller fetch never lowers what is kept"
    # Freed blocks stay mapped for the next fetch: next to no page is faulted in again
    # (without it, glibc gave the memory back and every page faulted anew).
    assert got["warm"] < pages // 10, got
