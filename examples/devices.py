"""Devices: ``python examples/devices.py`` (from the repository root).

Prints what this host has, starts a pool with ``device = "auto"`` (each worker of a multi-GPU
host gets its own GPU; elsewhere mps or cpu), and shows a call asking for CUDA: served by a
node whose host has it, or refused at once with DeviceNotAvailable.
"""

import json
import os

import snakepit_tasks as sp

# The pools, for this script and the nodes run_as_script starts (they read the environment).
POOLS = [{"name": "models", "adapter": "adapters.data:DataAdapter",
          "pool_size": 2, "device": "auto"}]
os.environ.setdefault("SNAKEPIT_POOLS", json.dumps(POOLS))


def main() -> None:
    print("this host:", sp.hardware.one_line())
    print("capabilities:", {k: v for k, v in sp.hardware.capabilities().items()
                            if isinstance(v, bool)})
    for _ in range(2):
        info = sp.execute("device_info", pool="models")
        print(info["worker_id"], "runs on", info["device"],
              "CUDA_VISIBLE_DEVICES =", info["cuda_visible_devices"])
    try:
        print(sp.execute("device_info", pool="models", requires=["cuda"]))
    except sp.errors.DeviceNotAvailable as exc:
        print("requires=['cuda']:", exc)


if __name__ == "__main__":
    sp.run_as_script(main)
