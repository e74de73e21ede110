"""Detection, cached per process: :func:`detect` probes once (thread-safe) and every other
function here reads that result, so :func:`capabilities` is cheap after the first call."""

from __future__ import annotations

import logging
import threading
from typing import Any

from . import cpu, mps, nvidia, rocm
from .model import Hardware

log = logging.getLogger("snakepit_tasks.hardware")

#: Accelerators in the order :func:`identity` prefers them.
ACCELERATORS = ("cuda", "rocm", "mps")

_lock = threading.Lock()
_cached: Hardware | None = None


def detect(refresh: bool = False) -> Hardware:
    """This host's platform, CPU, memory and accelerators; probed on the first call (or when
    ``refresh``) and cached for the process. ``.as_dict()`` gives the JSON form."""
    global _cached
    with _lock:
        if _cached is None or refresh:
            _cached = probe()
        return _cached


def refresh() -> Hardware:
    """Probe again (a GPU was plugged in, a driver loaded) and cache the new result."""
    return detect(refresh=True)


def probe() -> Hardware:
    """Probe the hardware now, bypassing the cache."""
    cuda, cuda_note = nvidia.detect()
    amd, rocm_note = rocm.detect()
    has_mps, mps_note = mps.detect()
    notes = {name: note for name, note in
             (("cuda", cuda_note), ("rocm", rocm_note), ("mps", mps_note)) if note}
    hardware = Hardware(
        platform=cpu.detect_platform(),
        cpu=cpu.detect_cpu(),
        memory=cpu.detect_memory(),
        cuda=cuda,
        rocm=amd,
        mps=has_mps,
        notes=notes,
    )
    log.debug("hardware: detected %d CUDA and %d ROCm GPU(s), mps=%s, %d CPU flags",
              len(cuda), len(amd), has_mps, len(hardware.cpu.flags))
    return hardware


def capabilities(hardware: Hardware | None = None) -> dict[str, Any]:
    """What this host can run, JSON-encodable (a fresh dict each call).

    ``cuda``/``rocm``/``mps``/``cpu`` and ``avx``/``avx2``/``avx512`` are booleans; the extras
    are ``gpu_count``, ``cuda_devices``, ``rocm_devices``, ``cuda_free_memory_mb`` (per CUDA
    device at detection time), ``cuda_compute_capability`` (the lowest), ``cpu_cores``
    (logical) and ``memory_total_mb``.
    """
    hw = hardware or detect()
    flags = set(hw.cpu.flags)
    versions = [gpu.compute_capability for gpu in hw.cuda if gpu.compute_capability]
    return {
        "cpu": True,
        "cuda": bool(hw.cuda),
        "mps": hw.mps,
        "rocm": bool(hw.rocm),
        "avx": "avx" in flags,
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "gpu_count": hw.gpu_count,
        "cuda_devices": len(hw.cuda),
        "rocm_devices": len(hw.rocm),
        "cuda_free_memory_mb": [gpu.memory_free_mb for gpu in hw.cuda],
        "cuda_compute_capability": min(versions, key=_version, default=None),
        "cpu_cores": hw.cpu.logical_cores,
        "memory_total_mb": hw.memory.total_mb,
    }


def identity(hardware: Hardware | None = None) -> dict[str, Any]:
    """What a lock file records about this host: ``platform`` (``"linux-x86_64"``),
    ``accelerator`` (``cuda``/``rocm``/``mps``/``cpu``), ``cpu_features`` (sorted) and
    ``gpu_count``; nothing that changes between calls."""
    hw = hardware or detect()
    present = {"cuda": bool(hw.cuda), "rocm": bool(hw.rocm), "mps": hw.mps}
    return {
        "platform": f"{hw.platform.system}-{hw.platform.machine}".lower(),
        "accelerator": next((name for name in ACCELERATORS if present[name]), "cpu"),
        "cpu_features": sorted(cpu.RELEVANT_FLAGS.intersection(hw.cpu.flags)),
        "gpu_count": hw.gpu_count,
    }


def summary(hardware: Hardware | None = None) -> str:
    """A few lines for people: platform, CPU, memory, then each accelerator or why none."""
    hw = hardware or detect()
    p, c, m = hw.platform, hw.cpu, hw.memory
    simd = [f for f in ("avx", "avx2", "avx512f", "neon") if f in c.flags]
    available = "" if m.available_mb is None else f", {m.available_mb} MiB available"
    lines = [
        f"platform: {p.system} {p.release} {p.machine}, Python {p.python}",
        f"cpu:      {c.model}, {c.physical_cores} physical / {c.logical_cores} logical cores"
        + (f" ({' '.join(simd)})" if simd else ""),
        f"memory:   {m.total_mb} MiB total{available}",
    ]
    for gpu in (*hw.cuda, *hw.rocm):
        label = "cuda" if gpu.vendor == "nvidia" else "rocm"
        memory = "" if gpu.memory_total_mb is None else (
            f", {gpu.memory_free_mb} / {gpu.memory_total_mb} MiB free")
        version = f", {gpu.compute_capability}" if gpu.compute_capability else ""
        lines.append(f"{label}:{gpu.index:<5} {gpu.name}{version}{memory}")
    if hw.mps:
        lines.append("mps:      available")
    for name in ACCELERATORS:
        if name in hw.notes:
            lines.append(f"{name + ':':<10}none ({hw.notes[name]})")
    return "\n".join(lines)


def one_line(hardware: Hardware | None = None) -> str:
    """One line for people: ``"Linux x86_64, 2 cores (avx avx2), 23 GiB, cuda: 2x A100"``."""
    hw = hardware or detect()
    simd = [f for f in ("avx", "avx2", "avx512f", "neon") if f in hw.cpu.flags]
    parts = [f"{hw.platform.system} {hw.platform.machine}",
             f"{hw.cpu.logical_cores} cores" + (f" ({' '.join(simd)})" if simd else ""),
             f"{hw.memory.total_mb // 1024} GiB"]
    for label, gpus in (("cuda", hw.cuda), ("rocm", hw.rocm)):
        if gpus:
            names = sorted({gpu.name for gpu in gpus})
            parts.append(f"{label}: {len(gpus)}x {'/'.join(names)}")
    if hw.mps:
        parts.append("mps")
    if not hw.gpu_count:
        parts.append("no GPU" + (f" ({hw.notes['cuda']})" if "cuda" in hw.notes else ""))
    return ", ".join(parts)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())
