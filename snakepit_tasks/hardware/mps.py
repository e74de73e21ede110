"""Apple's Metal Performance Shaders (MPS): macOS 12.3+ on Apple silicon, confirmed by
``torch.backends.mps.is_available()`` when torch is installed (torch is never installed or
imported otherwise)."""

from __future__ import annotations

import importlib.util
import logging
import platform

log = logging.getLogger("snakepit_tasks.hardware")

MIN_MACOS = (12, 3)


def detect() -> tuple[bool, str]:
    """Whether MPS is usable, and a note saying why not (else ``""``)."""
    note = unsupported_reason(platform.system(), platform.machine(), platform.mac_ver()[0])
    if not note:
        note = _torch_reason()
    if note:
        log.debug("hardware: no MPS: %s", note)
    return not note, note


def unsupported_reason(system: str, machine: str, macos: str) -> str:
    """Why this platform cannot have MPS (``""`` when it can)."""
    if system != "Darwin" or machine != "arm64":
        return f"MPS needs macOS on Apple silicon (this is {system} {machine})"
    try:
        version = tuple(int(part) for part in macos.split(".")[:2])
    except ValueError:
        return ""  # an unreadable version: let torch (if any) decide
    if version and version < MIN_MACOS:
        return f"MPS needs macOS {MIN_MACOS[0]}.{MIN_MACOS[1]}+ (this is {macos})"
    return ""


def _torch_reason() -> str:
    """``""`` when torch is absent or says MPS is available, else why not."""
    try:
        if importlib.util.find_spec("torch") is None:
            return ""
        import torch

        if torch.backends.mps.is_available():
            return ""
        return "torch.backends.mps.is_available() is False"
    except Exception as exc:  # a broken torch install must not break detection
        log.debug("hardware: torch could not check MPS: %s: %s", type(exc).__name__, exc)
        return ""
