"""AMD GPUs (ROCm) from sysfs: the KFD topology, else DRM cards of vendor 0x1002; names from
``rocm-smi --showproductname --json`` when it is on PATH (killed after a short timeout)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from .model import Gpu

log = logging.getLogger("snakepit_tasks.hardware")

AMD_VENDOR_ID = 0x1002
SMI_TIMEOUT_S = 3.0


def detect(sys_root: Path = Path("/sys"), smi_timeout: float = SMI_TIMEOUT_S
           ) -> tuple[tuple[Gpu, ...], str]:
    """The AMD GPUs found, and a note saying why there are none (else ``""``)."""
    gpus = from_kfd(sys_root) or from_drm(sys_root)
    names = product_names(smi_timeout) if shutil.which("rocm-smi") else []
    if not gpus and names:
        gpus = [Gpu(vendor="amd", index=i, name=name) for i, name in enumerate(names)]
    elif len(names) == len(gpus):
        gpus = [_renamed(gpu, name) for gpu, name in zip(gpus, names, strict=True)]
    if not gpus:
        note = f"no AMD GPU in {sys_root}/class/kfd or {sys_root}/class/drm, and no rocm-smi"
        log.debug("hardware: %s", note)
        return (), note
    return tuple(gpus), ""


def from_kfd(sys_root: Path) -> list[Gpu]:
    """GPU nodes (``simd_count > 0``) of the KFD topology, in node order."""
    nodes = sys_root / "class/kfd/kfd/topology/nodes"
    gpus: list[Gpu] = []
    try:
        dirs = sorted((d for d in nodes.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))
    except OSError as exc:
        log.debug("hardware: no KFD topology at %s: %s", nodes, exc)
        return gpus
    for node in dirs:
        props = _properties(node / "properties")
        if props.get("simd_count", 0) <= 0:
            continue  # a CPU node
        target = _gfx_target(props.get("gfx_target_version", 0))
        total = sum(_properties(bank / "properties").get("size_in_bytes", 0)
                    for bank in _subdirs(node / "mem_banks"))
        device = sys_root / f"class/drm/renderD{props.get('drm_render_minor', -1)}/device"
        total_mb = total // 2**20 or _read_mb(device / "mem_info_vram_total")
        used_mb = _read_mb(device / "mem_info_vram_used")
        gpus.append(Gpu(
            vendor="amd",
            index=len(gpus),
            name=_read(node / "name") or target or f"AMD GPU {props.get('device_id', 0):#x}",
            memory_total_mb=total_mb,
            memory_free_mb=None if total_mb is None or used_mb is None else total_mb - used_mb,
            uuid=f"{props['unique_id']:x}" if props.get("unique_id") else None,
            compute_capability=target,
        ))
    return gpus


def from_drm(sys_root: Path) -> list[Gpu]:
    """DRM cards whose PCI vendor is AMD (no KFD: the driver is loaded without ROCm)."""
    gpus: list[Gpu] = []
    cards = [c for c in _subdirs(sys_root / "class/drm") if re.fullmatch(r"card\d+", c.name)]
    for card in sorted(cards, key=lambda c: int(c.name[4:])):
        device = card / "device"
        if _read(device / "vendor").lower() != f"{AMD_VENDOR_ID:#06x}":
            continue
        total_mb = _read_mb(device / "mem_info_vram_total")
        used_mb = _read_mb(device / "mem_info_vram_used")
        gpus.append(Gpu(
            vendor="amd",
            index=len(gpus),
            name=f"AMD GPU {_read(device / 'device') or '?'}",
            memory_total_mb=total_mb,
            memory_free_mb=None if total_mb is None or used_mb is None else total_mb - used_mb,
        ))
    return gpus


def product_names(timeout: float = SMI_TIMEOUT_S) -> list[str]:
    """Card names from ``rocm-smi --showproductname --json``, in card order; ``[]`` when it
    fails, prints something else or runs past ``timeout`` seconds."""
    argv = ["rocm-smi", "--showproductname", "--json"]
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    except OSError as exc:
        log.debug("hardware: cannot run rocm-smi: %s", exc)
        return []
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: its children go too
        except ProcessLookupError:
            pass
        proc.communicate()
        log.debug("hardware: rocm-smi ran past %.1f s; killed", timeout)
        return []
    try:
        cards = json.loads(out) if proc.returncode == 0 else None
    except ValueError:
        cards = None
    if not isinstance(cards, dict):
        log.debug("hardware: rocm-smi exited %s without a JSON object", proc.returncode)
        return []
    numbered = [(int(k[4:]), v) for k, v in cards.items()
                if re.fullmatch(r"card\d+", k) and isinstance(v, dict)]
    return [_product_name(fields) for _, fields in sorted(numbered, key=lambda kv: kv[0])]


def _product_name(fields: dict[str, object]) -> str:
    for key in ("Card Series", "Card series", "Card Model", "Card model", "Card SKU"):
        if fields.get(key):
            return str(fields[key])
    return "AMD GPU"


def _renamed(gpu: Gpu, name: str) -> Gpu:
    return Gpu(**{**vars(gpu), "name": name})


def _gfx_target(version: int) -> str | None:
    """``90010`` -> ``"gfx90a"``, ``110000`` -> ``"gfx1100"``."""
    if version <= 0:
        return None
    major, minor, step = version // 10000, version // 100 % 100, version % 100
    return f"gfx{major}{minor}{step:x}"


def _properties(path: Path) -> dict[str, int]:
    """A KFD ``properties`` file (``name value`` lines) as integers."""
    values: dict[str, int] = {}
    for line in _read(path).splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            values[key] = int(value)
    return values


def _subdirs(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir()]
    except OSError:
        return []


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _read_mb(path: Path) -> int | None:
    text = _read(path)
    return int(text) // 2**20 if text.isdigit() else None
