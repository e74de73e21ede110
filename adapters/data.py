"""The data adapter: tools that make and read large tables and arrays (the zero-copy path),
and report the device a worker was given. Used by the README's examples, bench/ and tests.
Needs numpy and pyarrow (``pip install 'snakepit-tasks[arrow]'``)."""

from __future__ import annotations

import os
from typing import Any

from snakepit_tasks.bridge import BaseAdapter, tool

_MEMFD = "/memfd:snakepit-zc"
_TABLES: dict[tuple[float, int], Any] = {}  # make_table(cache=True): built once per worker


class DataAdapter(BaseAdapter):
    """Large data in and out, and this worker's device."""

    __thread_safe__ = True

    @tool(description="A table of `mib` MiB: int64 columns `n`, `n1`, ... = 0, 1, 2, ...; "
                      "`cache`: the same table every call (built once per worker)")
    def make_table(self, mib: float = 1.0, columns: int = 1, cache: bool = False) -> Any:
        import numpy as np
        import pyarrow as pa

        if cache and (mib, columns) in _TABLES:
            return _TABLES[(mib, columns)]
        rows = max(1, int(mib * 2**20) // (8 * columns))
        table = pa.table({f"n{i}" if i else "n": np.arange(rows, dtype=np.int64)
                          for i in range(columns)})
        if cache:
            _TABLES.clear()  # one cached table at a time
            _TABLES[(mib, columns)] = table
        return table

    @tool(description="A float64 array of the given shape, filled with `value`")
    def make_array(self, shape: list[int], value: float = 1.0) -> Any:
        import numpy as np

        return np.full(tuple(shape), value, dtype=np.float64)

    @tool(description="What this worker received: type, shape, dtype, sum, and whether its "
                      "memory is mapped from another process (zero-copy)")
    def describe(self, x: Any) -> dict[str, Any]:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        if isinstance(x, pa.Table):
            address = x.column(0).chunks[0].buffers()[1].address
            info = {"type": "Table", "rows": x.num_rows, "columns": x.column_names,
                    "sum": int(pc.sum(x.column(0)).as_py())}
        else:
            array = np.asarray(x)
            address = array.__array_interface__["data"][0]
            info = {"type": type(x).__name__, "shape": list(array.shape),
                    "dtype": str(array.dtype), "sum": float(array.sum()),
                    "writeable": bool(getattr(array, "flags", None) and array.flags.writeable)}
        info.update(shared=_in_memfd(address), pid=os.getpid(),
                    worker_id=self.session_context.worker_id)
        return info

    @tool(description="Return the argument unchanged (tables and arrays included)")
    def echo(self, x: Any) -> Any:
        return x

    @tool(description="This worker's device, its visible GPUs and its memory")
    def device_info(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "context_device": self.session_context.device,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "worker_id": self.session_context.worker_id,
            "pid": os.getpid(),
            "memfds": _memfds(),
        }


def _in_memfd(address: int) -> bool:
    """Whether ``address`` lies in a snakepit shared-memory segment mapped here."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                if _MEMFD in line:
                    start, end = (int(x, 16) for x in line.split()[0].split("-"))
                    if start <= address < end:
                        return True
    except OSError:
        pass
    return False


def _memfds() -> int:
    """Snakepit shared-memory segments this process holds open (distinct files)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(_MEMFD):
                found.add(os.stat(f"/proc/self/fd/{fd}").st_ino)
        except OSError:
            pass
    return len(found)
