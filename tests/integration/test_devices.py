"""Device-aware routing through the real stack: capabilities in node leases, calls and pools
that require one, refusal to start a pool the host cannot serve, and ``device = "auto"``
giving each worker of a (fake, NVML-faked) multi-GPU host its own GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import wait_until
from unit.test_hardware import FAKE_PYNVML

import snakepit_tasks as sp
from snakepit_tasks import connections, errors, keys, kombu_redis, pool_state, processes

pytestmark = pytest.mark.timeout(120)

DATA = "adapters.data:DataAdapter"


def fake_gpu_host(tmp_path: Path, count: int = 2) -> dict[str, str]:
    """Environment of a node whose host looks like ``count`` NVIDIA GPUs to NVML: the fake
    ``pynvml`` module of tests/unit/test_hardware.py first on the path."""
    folder = tmp_path / f"nvml{count}"
    folder.mkdir(exist_ok=True)
    (folder / "pynvml.py").write_text(FAKE_PYNVML)
    (folder / "nvml.json").write_text(json.dumps({"count": count}))
    return {"PYTHONPATH": str(folder), "FAKE_NVML_CONFIG": str(folder / "nvml.json")}


def lease_capabilities(n) -> dict:  # type: ignore[no-untyped-def]
    r = connections.redis_client(n.redis_url)
    [lease] = [x for x in pool_state.live_nodes(r, n.pool) if x["name"] == n.name]
    return dict(json.loads(lease["capabilities"]))


def test_device_auto_gives_each_worker_of_a_multi_gpu_host_its_own_gpu(node, tmp_path):
    n = node(adapter=DATA, pool_size=2, device="auto", env=fake_gpu_host(tmp_path, 2))
    caps = lease_capabilities(n)
    assert caps["cuda"] is True and caps["cuda_devices"] == 2
    assert caps["cuda_free_memory_mb"] == [70 * 1024, 69 * 1024]
    seen: dict[str, dict] = {}

    def both() -> bool:
        info = sp.execute("device_info", pool=n.pool, app=n.app)
        seen[info["worker_id"]] = info
        return len(seen) == 2

    wait_until(both, timeout=30, message="calls served by both workers")
    assert {w["cuda_visible_devices"] for w in seen.values()} == {"0", "1"}
    for info in seen.values():
        assert info["device"] == info["context_device"] == "cuda:0"


def test_a_cpu_pool_tells_its_workers_they_run_on_the_cpu(node):
    n = node(adapter=DATA, device="auto")
    info = sp.execute("device_info", pool=n.pool, app=n.app)
    assert info["device"] == info["context_device"] == "cpu"
    assert lease_capabilities(n)["cuda"] is False


def test_a_call_nobody_can_serve_fails_at_once_naming_the_requirement(node):
    n = node(adapter=DATA)
    r = connections.redis_client(n.redis_url)
    with pytest.raises(errors.DeviceNotAvailable, match=r"no live node of pool .* has cuda"):
        sp.execute("device_info", pool=n.pool, app=n.app, requires=["cuda"])
    with pytest.raises(errors.DeviceNotAvailable, match="cuda"):
        sp.execute_async("device_info", pool=n.pool, app=n.app, requires=["cuda"])
    assert kombu_redis.queue_length(r, keys.pool_queue(n.pool)) == 0, "nothing was sent"
    assert sp.get_stats(n.pool, app=n.app)["requests"] == 0
    with pytest.raises(errors.ConfigurationError, match="unknown capability 'gpu'"):
        sp.execute("device_info", pool=n.pool, app=n.app, requires=["gpu"])
    # What the host has is served as usual.
    info = sp.execute("device_info", pool=n.pool, app=n.app, requires=["cpu", "avx"])
    assert info["worker_id"].startswith(n.name)


def test_calls_that_require_cuda_go_to_the_node_whose_host_has_it(node, tmp_path):
    gpu = node(adapter=DATA, name=None, env=fake_gpu_host(tmp_path, 1))
    cpu = node(pool=gpu.pool, adapter=DATA, name=f"{gpu.pool}-cpu@itest")
    for _ in range(6):
        info = sp.execute("device_info", pool=gpu.pool, app=cpu.app, requires=["cuda"])
        assert info["worker_id"].startswith(gpu.name + "/")
    served = {sp.execute("device_info", pool=gpu.pool, app=cpu.app)["worker_id"].split("/")[0]
              for _ in range(12)}
    assert cpu.name in served, "calls without requirements still go anywhere"


@pytest.mark.parametrize("fields, why", [
    ({"requires": ["cuda"]}, "requires cuda, which this host lacks"),
    ({"device": "cuda:1"}, "cuda:1 is not available on this host"),
])
def test_a_pool_the_host_cannot_serve_refuses_to_start(node, make_app, fields, why):
    n = node(adapter=DATA, wait=False, **fields)
    assert n.proc.wait(60) == processes.EXIT_ADAPTER_UNLOADABLE, n.output()
    assert why in n.output()
    app = make_app(n.table)
    with pytest.raises(errors.NoWorkersAvailable) as failed:
        sp.execute("device_info", pool=n.pool, app=app)
    if "requires" in fields:
        assert "it requires cuda" in str(failed.value)
