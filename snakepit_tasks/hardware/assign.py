"""Which device each worker of a pool uses: its name (what ``self.device`` says) and the
environment that makes it so (``CUDA_VISIBLE_DEVICES`` for ``device = "auto"``), plus the
check that a host has what a pool requires."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import DeviceNotAvailable
from .inventory import capabilities, detect
from .model import Hardware
from .selection import select

#: The environment variable a runtime reads its device name from.
DEVICE_ENV = "SNAKEPIT_DEVICE"


def worker_device(device: str, index: int, hardware: Hardware | None = None
                  ) -> tuple[str, dict[str, str]]:
    """``(device name, environment)`` for worker ``index`` of a pool whose ``device`` is
    given. ``"auto"``: worker i gets CUDA GPU i mod n (made its only visible GPU, so it is
    ``cuda:0`` inside), else ROCm GPU i mod n likewise, else ``mps``, else ``cpu``.
    A named device must exist here (DeviceNotAvailable); ``""`` names none (``cpu``)."""
    if not device:
        return "cpu", {}
    hw = hardware or detect()
    if device != "auto":
        chosen = select(device, hw)
        name = chosen if isinstance(chosen, str) else (
            f"{chosen[0]}:{chosen[1]}" if ":" in device else chosen[0])
        return name, {DEVICE_ENV: name}
    if hw.cuda:
        gpu = hw.cuda[index % len(hw.cuda)]
        return "cuda:0", {DEVICE_ENV: "cuda:0", "CUDA_VISIBLE_DEVICES": str(gpu.index)}
    if hw.rocm:
        gpu = hw.rocm[index % len(hw.rocm)]
        return "rocm:0", {DEVICE_ENV: "rocm:0", "HIP_VISIBLE_DEVICES": str(gpu.index),
                          "ROCR_VISIBLE_DEVICES": str(gpu.index)}
    name = "mps" if hw.mps else "cpu"
    return name, {DEVICE_ENV: name}


def missing(requires: Iterable[str], caps: dict[str, Any] | None = None) -> list[str]:
    """The capabilities of ``requires`` that ``caps`` (default: this host's) lacks."""
    have = capabilities() if caps is None else caps
    return [name for name in requires if have.get(name) is not True]


def check_host(pool: str, requires: Iterable[str], device: str = "",
               hardware: Hardware | None = None) -> None:
    """Raise DeviceNotAvailable unless this host has every capability ``pool`` requires and
    the device it names."""
    hw = hardware or detect()
    lacking = missing(requires, capabilities(hw))
    if lacking:
        why = "; ".join(f"{name}: {hw.notes[name]}" for name in lacking if name in hw.notes)
        raise DeviceNotAvailable(
            f"pool {pool!r} requires {', '.join(lacking)}, which this host lacks"
            + (f" ({why})" if why else "")
            + "; run it on a host that has it, or drop it from the pool's `requires`",
            {"pool": pool, "requires": list(requires), "missing": lacking},
        )
    if device and device != "auto":
        worker_device(device, 0, hw)
