"""snakepit_tasks.hardware: detection on this machine, NVIDIA through a fake ``pynvml``
module (a real file on PYTHONPATH of a subprocess), ROCm from a fake sysfs tree and fake
``rocm-smi`` executables, device selection and its errors, and the ``hardware`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from snakepit_tasks import hardware
from snakepit_tasks.errors import ConfigurationError, DeviceNotAvailable, NoDevice
from snakepit_tasks.hardware import cpu, mps, rocm
from snakepit_tasks.hardware.model import Cpu, Gpu, Hardware, Memory, Platform

# A stand-in for nvidia-ml-py's ``pynvml``: same function names, same NVMLError; what it
# reports comes from the JSON file named by FAKE_NVML_CONFIG, read at every nvmlInit().
FAKE_PYNVML = '''
import json, os

class NVMLError(Exception):
    pass

class _Memory:
    def __init__(self, total, free):
        self.total, self.free, self.used = total, free, total - free

_config = {}

def nvmlInit():
    global _config
    with open(os.environ["FAKE_NVML_CONFIG"]) as f:
        _config = json.load(f)
    if _config.get("init_error"):
        raise NVMLError("Driver Not Loaded")

def nvmlShutdown():
    pass

def nvmlSystemGetDriverVersion():
    return b"550.54.15"

def nvmlDeviceGetCount():
    return _config["count"]

def nvmlDeviceGetHandleByIndex(index):
    if index in _config.get("broken", []):
        raise NVMLError("GPU is lost")
    return index

def nvmlDeviceGetName(handle):
    return "NVIDIA A100-SXM4-80GB"

def nvmlDeviceGetMemoryInfo(handle):
    return _Memory(80 * 2**30, (70 - handle) * 2**30)

def nvmlDeviceGetUUID(handle):
    return "GPU-0000-%d" % handle

def nvmlDeviceGetCudaComputeCapability(handle):
    return (8, 0)
'''

PROBE = """
import json, sys
from snakepit_tasks import hardware

def attempt(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:
        return [type(exc).__name__, str(exc)]

result = {
    "detect": hardware.detect().as_dict(),
    "capabilities": hardware.capabilities(),
    "identity": hardware.identity(),
    "cuda": attempt(hardware.select, "cuda"),
    "cuda1": attempt(hardware.select, "cuda:1"),
    "cuda2": attempt(hardware.select, "cuda:2"),
    "fallback": attempt(hardware.select_with_fallback, ["cuda:1", "mps", "cpu"]),
    "fallback_mps": attempt(hardware.select_with_fallback, ["mps", "cuda", "cpu"]),
    "pynvml_loaded": "pynvml" in sys.modules,
}
print(json.dumps(result))
"""


def run_probe(tmp_path: Path, config: dict[str, Any] | None, script: str = PROBE
              ) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter with the fake pynvml first on its path (or, for
    ``config=None``, with ``pynvml`` unimportable) and return the JSON it prints."""
    if config is None:
        script = "import sys; sys.modules['pynvml'] = None\n" + script
    else:
        (tmp_path / "pynvml.py").write_text(FAKE_PYNVML)
        (tmp_path / "nvml.json").write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(tmp_path),
           "FAKE_NVML_CONFIG": str(tmp_path / "nvml.json")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def fake_hardware(cuda: int = 0, rocm_gpus: int = 0, has_mps: bool = False,
                  flags: tuple[str, ...] = ("avx", "avx2", "sse4_2")) -> Hardware:
    return Hardware(
        platform=Platform("Linux", "x86_64", "6.1", "3.11.7"),
        cpu=Cpu("Test CPU", 4, 8, tuple(sorted(flags))),
        memory=Memory(16384, 8000),
        cuda=tuple(Gpu("nvidia", i, "A100", 81920, 70000, f"GPU-{i}", "550", "8.0")
                   for i in range(cuda)),
        rocm=tuple(Gpu("amd", i, "MI250X", compute_capability="gfx90a")
                   for i in range(rocm_gpus)),
        mps=has_mps,
        notes={} if cuda else {"cuda": "pynvml is not installed"},
    )


# --- this machine ---------------------------------------------------------------------------

def test_detect_this_machine() -> None:
    found = hardware.detect()
    data = found.as_dict()
    json.dumps(data)
    assert data["platform"]["system"] and data["platform"]["python"].startswith("3.")
    assert found.cpu.logical_cores >= 1 and found.cpu.physical_cores >= 1
    assert isinstance(data["cpu"]["flags"], list)
    if sys.platform.startswith("linux"):
        assert found.memory.total_mb > 0
        assert found.memory.available_mb is not None and found.memory.available_mb > 0
        assert found.cpu.model
    caps = hardware.capabilities()
    json.dumps(caps)
    assert caps["cpu"] is True
    if not Path("/proc/driver/nvidia").exists():
        assert caps["cuda"] is False and caps["cuda_devices"] == 0
        assert "cuda" in found.notes
    if sys.platform != "darwin":
        assert caps["mps"] is False
    assert caps["avx2"] == ("avx2" in found.cpu.flags)


def test_detect_is_cached_and_refresh_probes_again() -> None:
    first = hardware.detect()
    assert hardware.detect() is first
    again = hardware.refresh()
    # A new probe of the same host (available memory is a snapshot, so it may differ).
    assert again is not first
    assert (again.cpu, again.memory.total_mb) == (first.cpu, first.memory.total_mb)
    assert hardware.detect() is again
    assert hardware.detect(refresh=True) is not again


def test_detect_from_many_threads_probes_once() -> None:
    hardware.refresh()
    results: list[Hardware] = []
    threads = [threading.Thread(target=lambda: results.append(hardware.detect()))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(r) for r in results}) == 1


def test_identity_is_stable() -> None:
    first = hardware.identity()
    hardware.refresh()
    assert hardware.identity() == first
    assert set(first) == {"platform", "accelerator", "cpu_features", "gpu_count"}
    assert first["cpu_features"] == sorted(first["cpu_features"])
    assert first["accelerator"] in {"cuda", "rocm", "mps", "cpu"}
    json.dumps(first)


# --- NVIDIA through a fake pynvml -----------------------------------------------------------

def test_two_fake_nvidia_gpus(tmp_path: Path) -> None:
    out = run_probe(tmp_path, {"count": 2})
    caps = out["capabilities"]
    assert caps["cuda"] is True and caps["gpu_count"] == 2 and caps["cuda_devices"] == 2
    assert caps["cuda_free_memory_mb"] == [70 * 1024, 69 * 1024]
    assert caps["cuda_compute_capability"] == "8.0"
    gpu = out["detect"]["cuda"][1]
    assert gpu == {"vendor": "nvidia", "index": 1, "name": "NVIDIA A100-SXM4-80GB",
                   "memory_total_mb": 80 * 1024, "memory_free_mb": 69 * 1024,
                   "uuid": "GPU-0000-1", "driver_version": "550.54.15",
                   "compute_capability": "8.0"}
    assert out["cuda"] == ["cuda", 0]
    assert out["cuda1"] == ["cuda", 1]
    assert out["cuda2"][0] == "DeviceNotAvailable" and "2 cuda device(s)" in out["cuda2"][1]
    assert out["fallback"] == ["cuda", 1]
    assert out["fallback_mps"] == ["cuda", 0]
    assert out["identity"]["accelerator"] == "cuda" and out["identity"]["gpu_count"] == 2


def test_nvml_init_error_means_no_cuda(tmp_path: Path) -> None:
    out = run_probe(tmp_path, {"count": 2, "init_error": True})
    assert out["capabilities"]["cuda"] is False and out["capabilities"]["cuda_devices"] == 0
    assert "Driver Not Loaded" in out["detect"]["notes"]["cuda"]
    assert out["cuda"][0] == "DeviceNotAvailable" and "Driver Not Loaded" in out["cuda"][1]
    assert out["fallback"] == "cpu"


def test_nvml_device_error_skips_that_gpu(tmp_path: Path) -> None:
    out = run_probe(tmp_path, {"count": 2, "broken": [0]})
    assert [g["index"] for g in out["detect"]["cuda"]] == [1]
    assert out["capabilities"]["cuda"] is True


def test_pynvml_absent_means_no_cuda(tmp_path: Path) -> None:
    out = run_probe(tmp_path, None)
    assert out["capabilities"]["cuda"] is False
    assert "pynvml is not installed" in out["detect"]["notes"]["cuda"]
    assert out["cuda1"][0] == "DeviceNotAvailable"
    assert out["fallback"] == "cpu"


def test_refresh_reads_nvml_again(tmp_path: Path) -> None:
    script = """
import json, os
from snakepit_tasks import hardware
counts = [hardware.capabilities()["cuda_devices"]]
with open(os.environ["FAKE_NVML_CONFIG"], "w") as f:
    json.dump({"count": 2}, f)
counts.append(hardware.capabilities()["cuda_devices"])
hardware.refresh()
counts.append(hardware.capabilities()["cuda_devices"])
print(json.dumps({"counts": counts}))
"""
    assert run_probe(tmp_path, {"count": 1}, script)["counts"] == [1, 1, 2]


def test_pynvml_is_not_imported_before_detection(tmp_path: Path) -> None:
    script = "import json, sys, snakepit_tasks as sp\nsp.hardware\n" \
             "print(json.dumps({'loaded': 'pynvml' in sys.modules}))"
    assert run_probe(tmp_path, {"count": 1}, script) == {"loaded": False}


# --- ROCm: fake sysfs and fake rocm-smi -----------------------------------------------------

def write_kfd(root: Path) -> None:
    nodes = root / "class/kfd/kfd/topology/nodes"
    (nodes / "0").mkdir(parents=True)
    (nodes / "0/properties").write_text("cpu_cores_count 16\nsimd_count 0\nvendor_id 0\n")
    gpu = nodes / "1"
    (gpu / "mem_banks/0").mkdir(parents=True)
    (gpu / "properties").write_text(
        "cpu_cores_count 0\nsimd_count 440\ngfx_target_version 90010\nvendor_id 4098\n"
        "device_id 29704\nunique_id 1234\ndrm_render_minor 128\n")
    (gpu / "mem_banks/0/properties").write_text(f"heap_type 1\nsize_in_bytes {64 * 2**30}\n")
    (gpu / "name").write_text("\n")
    render = root / "class/drm/renderD128/device"
    render.mkdir(parents=True)
    (render / "mem_info_vram_used").write_text(f"{4 * 2**30}\n")


def test_rocm_from_kfd_topology(tmp_path: Path) -> None:
    write_kfd(tmp_path)
    gpus = rocm.from_kfd(tmp_path)
    assert gpus == [Gpu("amd", 0, "gfx90a", 64 * 1024, 60 * 1024, "4d2", None, "gfx90a")]


def test_rocm_from_drm_cards(tmp_path: Path) -> None:
    for card, vendor in (("card0", "0x8086"), ("card1", "0x1002")):
        (tmp_path / "class/drm" / card / "device").mkdir(parents=True)
        (tmp_path / "class/drm" / card / "device/vendor").write_text(vendor + "\n")
    (tmp_path / "class/drm/card1-DP-1").mkdir()
    (tmp_path / "class/drm/card1/device/device").write_text("0x73bf\n")
    (tmp_path / "class/drm/card1/device/mem_info_vram_total").write_text(str(16 * 2**30))
    assert rocm.from_drm(tmp_path) == [Gpu("amd", 0, "AMD GPU 0x73bf", 16 * 1024, None)]


def test_no_rocm_without_sysfs_or_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    gpus, note = rocm.detect(tmp_path)
    assert gpus == () and "no AMD GPU" in note


def fake_smi(tmp_path: Path, body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    smi = tmp_path / "bin/rocm-smi"
    smi.parent.mkdir(parents=True, exist_ok=True)
    smi.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ.get('PATH', '')}")


def test_rocm_smi_names_cards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cards = {"card1": {"Card series": "Instinct MI250X"}, "card0": {"Card model": "MI210"}}
    fake_smi(tmp_path, f"echo '{json.dumps(cards)}'\n", monkeypatch)
    assert rocm.product_names() == ["MI210", "Instinct MI250X"]
    write_kfd(tmp_path / "sys")
    (gpus, note) = rocm.detect(tmp_path / "sys")
    assert note == "" and [g.name for g in gpus] == ["gfx90a"]  # 2 names for 1 GPU: kept
    gpus, _ = rocm.detect(tmp_path / "nothing")
    assert [(g.index, g.name) for g in gpus] == [(0, "MI210"), (1, "Instinct MI250X")]


@pytest.mark.parametrize("body", ["exit 1\n", "echo not json\n", "echo '[1, 2]'\n"])
def test_rocm_smi_failing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    fake_smi(tmp_path, body, monkeypatch)
    assert rocm.product_names() == []
    assert rocm.detect(tmp_path)[0] == ()


def test_rocm_smi_hanging_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pid_file = tmp_path / "sleep.pid"
    fake_smi(tmp_path, f"sleep 30 &\necho $! > {pid_file}\nwait\n", monkeypatch)
    started = time.monotonic()
    assert rocm.product_names(timeout=0.5) == []
    assert time.monotonic() - started < 5
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child), "rocm-smi's child survived the timeout"


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody has reaped yet counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


# --- CPU, memory and MPS parsing ------------------------------------------------------------

def test_parse_cpuinfo_x86() -> None:
    block = "processor\t: {n}\nmodel name\t: Xeon\nphysical id\t: 0\ncore id\t\t: {c}\n" \
            "flags\t\t: fpu sse4_2 avx avx2 avx512f\n\n"
    text = "".join(block.format(n=n, c=n // 2) for n in range(4))  # 2 cores, 2 threads each
    found = cpu.parse_cpuinfo(text, logical=4)
    assert found == Cpu("Xeon", 2, 4, ("avx", "avx2", "avx512f", "fpu", "sse4_2"))


def test_parse_cpuinfo_arm() -> None:
    text = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve\n\n"
    found = cpu.parse_cpuinfo(text, logical=1)
    assert found.physical_cores == 1 and "neon" in found.flags and "sve" in found.flags


def test_parse_meminfo() -> None:
    text = "MemTotal:       16384000 kB\nMemFree:  100 kB\nMemAvailable:    8192000 kB\n"
    assert cpu.parse_meminfo(text) == Memory(16000, 8000)
    assert cpu.parse_meminfo("MemTotal: 2048 kB\n") == Memory(2, None)


def test_mps_platform_rules() -> None:
    assert "Apple silicon" in mps.unsupported_reason("Linux", "x86_64", "")
    assert "Apple silicon" in mps.unsupported_reason("Darwin", "x86_64", "14.2")
    assert "12.3" in mps.unsupported_reason("Darwin", "arm64", "12.1")
    assert mps.unsupported_reason("Darwin", "arm64", "14.2.1") == ""
    if sys.platform != "darwin":
        assert mps.detect()[0] is False


# --- selection ------------------------------------------------------------------------------

def test_select_on_cpu_only_host() -> None:
    hw = fake_hardware()
    assert hardware.select("cpu", hw) == "cpu"
    assert hardware.select("CPU", hw) == "cpu"
    with pytest.raises(DeviceNotAvailable) as info:
        hardware.select("cuda", hw)
    assert "cuda" in str(info.value) and "no cuda device" in str(info.value)
    assert "pynvml is not installed" in str(info.value)
    assert info.value.details["available"] == ["cpu"]
    with pytest.raises(DeviceNotAvailable, match="mps"):
        hardware.select("mps", hw)
    with pytest.raises(DeviceNotAvailable, match="rocm"):
        hardware.select("rocm", hw)


def test_select_accelerators() -> None:
    hw = fake_hardware(cuda=2, rocm_gpus=1, has_mps=True)
    assert hardware.select("cuda", hw) == ("cuda", 0)
    assert hardware.select("cuda:1", hw) == ("cuda", 1)
    assert hardware.select("rocm", hw) == ("rocm", 0)
    assert hardware.select("mps", hw) == ("mps", 0)
    with pytest.raises(DeviceNotAvailable, match=r"cuda:2 .*only 2 cuda device"):
        hardware.select("cuda:2", hw)
    assert hardware.available(hw) == ["cuda:0", "cuda:1", "rocm:0", "mps", "cpu"]


@pytest.mark.parametrize("name", ["tpu", "gpu", "cuda:x", "cuda:-1", "cpu:1", ""])
def test_select_rejects_unknown_names(name: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        hardware.select(name, fake_hardware())
    assert "cuda" in str(info.value) or "index" in str(info.value)
    assert info.value.details["valid"] == ["cuda", "mps", "rocm", "cpu"]


def test_select_with_fallback() -> None:
    assert hardware.select_with_fallback(["cuda", "mps", "cpu"], fake_hardware()) == "cpu"
    with_mps = fake_hardware(has_mps=True)
    assert hardware.select_with_fallback(["cuda", "mps", "cpu"], with_mps) == ("mps", 0)
    with pytest.raises(NoDevice) as info:
        hardware.select_with_fallback(["cuda", "rocm"], fake_hardware())
    assert "cuda, rocm" in str(info.value) and "cpu" in str(info.value)
    assert info.value.details["tried"] == ["cuda", "rocm"]
    assert set(info.value.details["reasons"]) == {"cuda", "rocm"}
    with pytest.raises(ConfigurationError, match="tpu"):
        hardware.select_with_fallback(["cpu", "tpu"], fake_hardware())
    with pytest.raises(ConfigurationError):
        hardware.select_with_fallback([], fake_hardware())


def test_capabilities_and_identity_of_given_hardware() -> None:
    hw = fake_hardware(cuda=2, flags=("avx", "avx2", "avx512f", "pni", "sse4_2"))
    caps = hardware.capabilities(hw)
    assert caps["cuda"] and not caps["mps"] and not caps["rocm"]
    assert caps["avx"] and caps["avx2"] and caps["avx512"]
    assert caps["gpu_count"] == 2 and caps["cuda_free_memory_mb"] == [70000, 70000]
    assert hardware.identity(hw) == {"platform": "linux-x86_64", "accelerator": "cuda",
                                     "cpu_features": ["avx", "avx2", "avx512f", "sse4_2"],
                                     "gpu_count": 2}
    assert "cuda:0" in hardware.summary(hw)


# --- the command ----------------------------------------------------------------------------

def test_cli_hardware_json() -> None:
    done = subprocess.run([sys.executable, "-m", "snakepit_tasks", "hardware", "--json"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["cpu"]["logical_cores"] >= 1
    assert isinstance(data["capabilities"]["cuda"], bool)


def test_cli_hardware_summary() -> None:
    done = subprocess.run([sys.executable, "-m", "snakepit_tasks", "hardware"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("platform:") and "cpu:" in done.stdout


def test_worker_devices_and_host_checks() -> None:
    two = fake_hardware(cuda=2)
    assert hardware.worker_device("", 0, two) == ("cpu", {})
    assert hardware.worker_device("auto", 0, two) == (
        "cuda:0", {"SNAKEPIT_DEVICE": "cuda:0", "CUDA_VISIBLE_DEVICES": "0"})
    assert hardware.worker_device("auto", 3, two)[1]["CUDA_VISIBLE_DEVICES"] == "1"
    assert hardware.worker_device("cuda:1", 0, two) == ("cuda:1", {"SNAKEPIT_DEVICE": "cuda:1"})
    assert hardware.worker_device("auto", 1, fake_hardware(rocm_gpus=2))[1][
        "HIP_VISIBLE_DEVICES"] == "1"
    assert hardware.worker_device("auto", 0, fake_hardware(has_mps=True))[0] == "mps"
    assert hardware.worker_device("auto", 0, fake_hardware())[0] == "cpu"
    with pytest.raises(DeviceNotAvailable, match="cuda:2"):
        hardware.worker_device("cuda:2", 0, two)
    hardware.check_host("p", ["cuda", "avx2"], "auto", two)
    with pytest.raises(DeviceNotAvailable, match="pool 'p' requires cuda, which this host"):
        hardware.check_host("p", ["cuda", "avx"], "", fake_hardware())
    assert hardware.missing(["cuda", "avx"], {"cuda": False, "avx": True}) == ["cuda"]
    assert "no GPU" in hardware.one_line(fake_hardware())
    assert "cuda: 2x A100" in hardware.one_line(two)
