"""Large data without copies: ``python examples/large_data.py`` (from the repository root).

Starts a pool of adapters.data:DataAdapter (and an embedded Redis when none answers), then
gets a 256 MiB Arrow table back and passes a 16 MiB numpy array in, both as handles.
"""

import json
import os

import numpy as np
import pyarrow.compute as pc

import snakepit_tasks as sp

# The pools, for this script and the nodes run_as_script starts (they read the environment).
POOLS = [{"name": "data", "adapter": "adapters.data:DataAdapter", "pool_size": 1}]
os.environ.setdefault("SNAKEPIT_POOLS", json.dumps(POOLS))


def main() -> None:
    table = sp.execute("make_table", {"mib": 256}, pool="data")  # a pyarrow.Table
    print(type(table).__name__, table.num_rows, "rows, mapped:", sp.zero_copy.is_zero_copy(table))
    print("sum:", pc.sum(table["n"]).as_py())
    sp.zero_copy.release(table)  # the worker may reuse the memory now

    x = np.random.default_rng(0).random((2048, 1024))  # 16 MiB: travels as a handle
    info = sp.execute("describe", {"x": x}, pool="data")
    print("the worker read", info["shape"], info["dtype"], "in shared memory:", info["shared"])

    with sp.zero_copy.hold(sp.execute("echo", {"x": x}, pool="data")) as back:
        print("an array comes back as an array:", type(back).__name__, back.shape)


if __name__ == "__main__":
    sp.run_as_script(main)
