"""Hardware detection: CPU, memory and accelerators of this host, and picking a device.

    python examples/hardware_detection.py      # no pool needed
"""

from __future__ import annotations

import json

import snakepit_tasks as sp


def main() -> None:
    print(sp.hardware.summary())
    caps = sp.hardware.capabilities()
    print("capabilities:", json.dumps(caps, sort_keys=True))
    device = sp.hardware.select_with_fallback(["cuda", "rocm", "mps", "cpu"])
    print("device for a model (cuda > rocm > mps > cpu):", device)
    found = sp.hardware.detect().as_dict()
    print("cpu cores:", found["cpu"]["logical_cores"], "| accelerators:", found["gpu_count"])


if __name__ == "__main__":
    main()
