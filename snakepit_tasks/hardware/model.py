"""What detection found: frozen, JSON-encodable records of the platform, CPU, memory and GPUs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Platform:
    """The operating system, the machine architecture and the Python version."""

    system: str  # "Linux", "Darwin", "Windows"
    machine: str  # "x86_64", "arm64", "aarch64"
    release: str
    python: str  # "3.11.7"


@dataclass(frozen=True)
class Cpu:
    """The CPU model, its core counts and its feature flags (lower case, sorted)."""

    model: str
    physical_cores: int
    logical_cores: int
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Memory:
    """Main memory in MiB; ``available_mb`` is None where the platform does not say."""

    total_mb: int
    available_mb: int | None


@dataclass(frozen=True)
class Gpu:
    """One NVIDIA (CUDA) or AMD (ROCm) GPU as its vendor's tools report it.

    ``compute_capability`` is ``"8.0"`` for NVIDIA and the gfx target (``"gfx90a"``) for AMD.
    ``memory_free_mb`` is a snapshot taken at detection time.
    """

    vendor: str  # "nvidia" | "amd"
    index: int
    name: str
    memory_total_mb: int | None = None
    memory_free_mb: int | None = None
    uuid: str | None = None
    driver_version: str | None = None
    compute_capability: str | None = None


@dataclass(frozen=True)
class Hardware:
    """Everything :func:`snakepit_tasks.hardware.detect` found on this host.

    ``notes`` says, per accelerator that was not found (``"cuda"``, ``"rocm"``, ``"mps"``), why.
    """

    platform: Platform
    cpu: Cpu
    memory: Memory
    cuda: tuple[Gpu, ...] = ()
    rocm: tuple[Gpu, ...] = ()
    mps: bool = False
    notes: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def gpu_count(self) -> int:
        """CUDA and ROCm GPUs, plus one for an Apple GPU usable through MPS."""
        return len(self.cuda) + len(self.rocm) + (1 if self.mps else 0)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-encodable copy (lists, not tuples)."""
        return {
            "platform": vars(self.platform).copy(),
            "cpu": {**vars(self.cpu), "flags": list(self.cpu.flags)},
            "memory": vars(self.memory).copy(),
            "cuda": [vars(gpu).copy() for gpu in self.cuda],
            "rocm": [vars(gpu).copy() for gpu in self.rocm],
            "mps": self.mps,
            "gpu_count": self.gpu_count,
            "notes": dict(self.notes),
        }
