"""The platform, the CPU (model, cores, flags) and main memory, from /proc on Linux and
``sysctl`` on macOS (best effort); elsewhere what the standard library knows."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path

from .model import Cpu, Memory, Platform

log = logging.getLogger("snakepit_tasks.hardware")

#: The flags that decide which builds of a native library run here (for ``identity()``).
RELEVANT_FLAGS = frozenset({
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512cd",
    "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
    "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "sve", "sve2",
})

SYSCTL_TIMEOUT_S = 2.0


def detect_platform() -> Platform:
    """This host's system, machine, kernel release and Python version."""
    return Platform(
        system=platform.system(),
        machine=platform.machine(),
        release=platform.release(),
        python=platform.python_version(),
    )


def detect_cpu(proc: Path = Path("/proc")) -> Cpu:
    """The CPU model, physical and logical core counts and flags."""
    logical = os.cpu_count() or 1
    system = platform.system()
    if system == "Linux":
        try:
            return parse_cpuinfo((proc / "cpuinfo").read_text(), logical)
        except OSError as exc:
            log.debug("hardware: cannot read %s/cpuinfo: %s", proc, exc)
    elif system == "Darwin":
        return _darwin_cpu(logical)
    return Cpu(model=platform.processor() or "unknown", physical_cores=logical,
               logical_cores=logical)


def detect_memory(proc: Path = Path("/proc")) -> Memory:
    """Total and available main memory in MiB (0 and None where it cannot be read)."""
    system = platform.system()
    if system == "Linux":
        try:
            return parse_meminfo((proc / "meminfo").read_text())
        except OSError as exc:
            log.debug("hardware: cannot read %s/meminfo: %s", proc, exc)
    elif system == "Darwin":
        total = _sysctl("hw.memsize")
        if total and total.isdigit():
            return Memory(total_mb=int(total) // 2**20, available_mb=None)
    try:
        total_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return Memory(total_mb=total_bytes // 2**20, available_mb=None)
    except (AttributeError, ValueError, OSError):
        return Memory(total_mb=0, available_mb=None)


def parse_cpuinfo(text: str, logical: int) -> Cpu:
    """A :class:`Cpu` from the text of /proc/cpuinfo (x86 ``flags`` or ARM ``Features``)."""
    model = ""
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    physical_id = core_id = ""
    for line in [*text.splitlines(), ""]:
        key, _, value = (part.strip() for part in line.partition(":"))
        key = key.lower()
        if not key:  # a blank line ends one processor's block
            if core_id:
                cores.add((physical_id, core_id))
            physical_id = core_id = ""
        elif key in ("model name", "hardware", "cpu model") and not model:
            model = value
        elif key in ("flags", "features"):
            flags.update(value.lower().split())
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            core_id = value
    if "asimd" in flags:
        flags.add("neon")
    return Cpu(
        model=model or platform.processor() or "unknown",
        physical_cores=len(cores) or logical,
        logical_cores=logical,
        flags=tuple(sorted(flags)),
    )


def parse_meminfo(text: str) -> Memory:
    """A :class:`Memory` from the text of /proc/meminfo (values in kB)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        number = rest.split()[:1]
        if number and number[0].isdigit():
            values[key.strip()] = int(number[0])
    available = values.get("MemAvailable")
    return Memory(
        total_mb=values.get("MemTotal", 0) // 1024,
        available_mb=None if available is None else available // 1024,
    )


def _darwin_cpu(logical: int) -> Cpu:
    model = _sysctl("machdep.cpu.brand_string") or platform.processor() or "unknown"
    physical = _sysctl("hw.physicalcpu")
    flags = _darwin_flags(
        (_sysctl("machdep.cpu.features") or "").split()
        + (_sysctl("machdep.cpu.leaf7_features") or "").split()
    )
    if platform.machine() == "arm64":
        flags.add("neon")
        flags.add("asimd")
    return Cpu(
        model=model,
        physical_cores=int(physical) if physical and physical.isdigit() else logical,
        logical_cores=logical,
        flags=tuple(sorted(flags)),
    )


def _darwin_flags(names: Iterable[str]) -> set[str]:
    """sysctl spells flags ``AVX1.0``, ``AVX2``, ``AVX512F``, ``SSE4.2``; /proc spells them
    ``avx``, ``avx2``, ``avx512f``, ``sse4_2``."""
    flags = set()
    for name in names:
        flag = name.lower().replace(".", "_")
        flags.add("avx" if flag == "avx1_0" else flag)
    return flags


def _sysctl(name: str) -> str | None:
    try:
        done = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True,
                              timeout=SYSCTL_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("hardware: sysctl %s failed: %s", name, exc)
        return None
    return done.stdout.strip() if done.returncode == 0 else None
