"""Choosing a device by name: ``select("cuda:1")`` -> ``("cuda", 1)``, ``select("cpu")`` ->
``"cpu"``, and ``select_with_fallback(["cuda", "mps", "cpu"])`` -> the first one present."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ConfigurationError, DeviceNotAvailable, NoDevice
from .inventory import detect
from .model import Hardware

#: The names :func:`select` knows; all but ``cpu`` take an optional ``:N`` index.
DEVICE_NAMES = ("cuda", "mps", "rocm", "cpu")

Device = tuple[str, int] | str


def select(device: str, hardware: Hardware | None = None) -> Device:
    """``(kind, index)`` for an accelerator (``"cuda"``, ``"cuda:N"``, ``"mps"``, ``"rocm"``,
    ``"rocm:N"``), ``"cpu"`` for the CPU.

    Raises :class:`DeviceNotAvailable` when the device is not on this host (the message says
    what was detected) and :class:`ConfigurationError` for a name that is no device.
    """
    kind, index = parse(device)
    hw = hardware or detect()
    if kind == "cpu":
        return "cpu"
    count = device_count(kind, hw)
    if index < count:
        return kind, index
    found = f"only {count} {kind} device(s) found" if count else f"no {kind} device found"
    why = f" ({hw.notes[kind]})" if kind in hw.notes else ""
    raise DeviceNotAvailable(
        f"{device} is not available on this host: {found}{why}; available here: "
        f"{', '.join(available(hw))}",
        {"device": device, "count": count, "available": available(hw),
         "reason": hw.notes.get(kind, "")},
    )


def select_with_fallback(devices: Sequence[str], hardware: Hardware | None = None) -> Device:
    """The first of ``devices`` that :func:`select` finds on this host.

    Raises :class:`NoDevice` (listing what was tried and what exists) when none is, and
    :class:`ConfigurationError` for an empty list or a name that is no device.
    """
    if isinstance(devices, str) or not devices:
        raise ConfigurationError(
            f"select_with_fallback needs a non-empty list of device names, got {devices!r}",
            {"valid": list(DEVICE_NAMES)},
        )
    for device in devices:
        parse(device)  # a typo is an error even when an earlier device would have matched
    hw = hardware or detect()
    reasons: dict[str, str] = {}
    for device in devices:
        try:
            return select(device, hw)
        except DeviceNotAvailable as exc:
            reasons[device] = exc.message
    raise NoDevice(
        f"none of {', '.join(devices)} is available on this host; available here: "
        f"{', '.join(available(hw))}",
        {"tried": list(devices), "available": available(hw), "reasons": reasons},
    )


def parse(device: str) -> tuple[str, int]:
    """``"cuda:1"`` -> ``("cuda", 1)``, ``"mps"`` -> ``("mps", 0)``; ConfigurationError for a
    name that is no device or a bad index."""
    kind, colon, number = str(device).strip().lower().partition(":")
    if kind not in DEVICE_NAMES:
        raise ConfigurationError(
            f"unknown device {device!r}: valid names are {', '.join(DEVICE_NAMES)} "
            "(cuda and rocm take an index, e.g. cuda:1)",
            {"device": device, "valid": list(DEVICE_NAMES)},
        )
    if not colon:
        return kind, 0
    if not number.isdigit() or (kind in ("cpu", "mps") and int(number) != 0):
        raise ConfigurationError(
            f"bad device index in {device!r}: expected {kind}:N with N >= 0"
            + (" (there is only one)" if kind in ("cpu", "mps") else ""),
            {"device": device, "valid": list(DEVICE_NAMES)},
        )
    return kind, int(number)


def available(hardware: Hardware | None = None) -> list[str]:
    """The devices present on this host, accelerators first: e.g. ``["cuda:0", "cpu"]``."""
    hw = hardware or detect()
    names = [f"{kind}:{i}" for kind in ("cuda", "rocm") for i in range(device_count(kind, hw))]
    return [*names, *(["mps"] if hw.mps else []), "cpu"]


def device_count(kind: str, hardware: Hardware) -> int:
    """How many devices of ``kind`` (``cuda``, ``rocm``, ``mps``, ``cpu``) this host has."""
    counts: dict[str, Any] = {"cuda": len(hardware.cuda), "rocm": len(hardware.rocm),
                              "mps": 1 if hardware.mps else 0, "cpu": 1}
    return int(counts[kind])
