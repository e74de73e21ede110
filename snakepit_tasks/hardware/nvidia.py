"""NVIDIA GPUs through NVML (the ``pynvml`` module of the ``nvidia-ml-py`` package, imported
only when detection runs; ``pip install 'snakepit-tasks[gpu]'``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .model import Gpu

log = logging.getLogger("snakepit_tasks.hardware")

INSTALL_HINT = "pip install 'snakepit-tasks[gpu]'"


def detect() -> tuple[tuple[Gpu, ...], str]:
    """The NVIDIA GPUs NVML reports, and a note saying why there are none (else ``""``).

    A missing ``pynvml``, a missing driver or an NVML error yields no GPUs, never an exception.
    """
    try:
        import pynvml
    except ImportError:
        return _none(f"pynvml is not installed ({INSTALL_HINT})")
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError: no driver, no library, driver/library mismatch
        return _none(f"NVML did not initialise: {type(exc).__name__}: {exc}")
    try:
        driver = _optional(pynvml.nvmlSystemGetDriverVersion)
        count = int(pynvml.nvmlDeviceGetCount())
        gpus = tuple(
            gpu for gpu in (_device(pynvml, index, driver) for index in range(count)) if gpu
        )
    except Exception as exc:
        return _none(f"NVML query failed: {type(exc).__name__}: {exc}")
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception as exc:
            log.debug("hardware: nvmlShutdown failed: %s", exc)
    if not gpus:
        return _none(f"NVML reports {count} usable GPU(s)")
    return gpus, ""


def _device(pynvml: Any, index: int, driver: str | None) -> Gpu | None:
    """GPU ``index``, or None (logged) when NVML cannot query it."""
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = _text(pynvml.nvmlDeviceGetName(handle))
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    except Exception as exc:
        log.debug("hardware: NVIDIA GPU %d skipped: %s: %s", index, type(exc).__name__, exc)
        return None
    capability = _optional(pynvml.nvmlDeviceGetCudaComputeCapability, handle)
    return Gpu(
        vendor="nvidia",
        index=index,
        name=name,
        memory_total_mb=int(memory.total) // 2**20,
        memory_free_mb=int(memory.free) // 2**20,
        uuid=_optional(pynvml.nvmlDeviceGetUUID, handle),
        driver_version=driver,
        compute_capability=f"{capability[0]}.{capability[1]}" if capability else None,
    )


def _optional(query: Callable[..., Any], *args: Any) -> Any:
    """``query(*args)`` (bytes decoded), or None where this NVML or GPU does not support it."""
    try:
        value = query(*args)
    except Exception as exc:
        log.debug("hardware: %s failed: %s", getattr(query, "__name__", query), exc)
        return None
    return _text(value) if isinstance(value, bytes) else value


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _none(note: str) -> tuple[tuple[Gpu, ...], str]:
    log.debug("hardware: no NVIDIA GPU: %s", note)
    return (), note
