"""Hardware detection: the platform, CPU (cores, AVX flags), memory and accelerators (NVIDIA
through NVML, AMD ROCm through sysfs/rocm-smi, Apple MPS), probed once per process.

    import snakepit_tasks as sp
    sp.hardware.detect().as_dict()        # everything found, JSON-encodable
    sp.hardware.capabilities()["cuda"]    # True / False, cheap after the first call
    sp.hardware.select_with_fallback(["cuda", "mps", "cpu"])  # ("cuda", 0) or ... "cpu"

Nothing here raises because a driver, a library or a tool is missing or broken: that
accelerator is reported absent, and ``detect().notes`` (logged at debug) says why.
"""

from .assign import DEVICE_ENV, check_host, missing, worker_device
from .inventory import capabilities, detect, identity, one_line, probe, refresh, summary
from .model import Cpu, Gpu, Hardware, Memory, Platform
from .selection import DEVICE_NAMES, Device, available, select, select_with_fallback

__all__ = [
    "DEVICE_ENV",
    "DEVICE_NAMES",
    "Cpu",
    "Device",
    "Gpu",
    "Hardware",
    "Memory",
    "Platform",
    "available",
    "capabilities",
    "check_host",
    "detect",
    "identity",
    "missing",
    "one_line",
    "probe",
    "refresh",
    "select",
    "select_with_fallback",
    "summary",
    "worker_device",
]

