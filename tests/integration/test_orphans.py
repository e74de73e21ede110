"""Orphan control across real processes: a node killed with SIGKILL leaves its runtimes behind
(they run in their own sessions); the next node of the same instance kills exactly those, and
nothing of another instance or of a live node.

The "nodes" here are small scripts that use :class:`ProcessRegistry` the way a node does
(sweep, then spawn runtime-like children carrying ``--run-id R --instance I`` and record
them). Every process started is killed by pid at teardown. PID reuse cannot be forced; the
unit tests cover it with a start-time mismatch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, subprocess_env, wait_until

from snakepit_tasks.node.registry import ProcessRegistry
from snakepit_tasks.processes import process_start_time

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc"),
]

# A runtime-like child: starts a grandchild in its own process group, reports its pid, sleeps.
# With "ignore-term" in its arguments it ignores SIGTERM (the sweep must escalate to SIGKILL).
CHILD = (
    "import signal, subprocess, sys, time\n"
    "if 'ignore-term' in sys.argv:\n"
    "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(90)'],\n"
    "                     stdin=subprocess.DEVNULL)\n"
    "print(p.pid, flush=True)\n"
    "time.sleep(90)\n"
)

# A fake node: sweep (as a starting node does), note the run, spawn children in new sessions,
# record all but the last `unrecorded` of them, report everything as JSON, then wait.
FAKE_NODE = (
    "import json, os, subprocess, sys, time\n"
    "from snakepit_tasks.node.registry import ProcessRegistry\n"
    "cfg = json.loads(sys.argv[1])\n"
    "reg = ProcessRegistry(cfg['data_dir'], cfg['instance'], cfg['token'])\n"
    "swept = reg.sweep(cfg['run_id'], grace_s=0.5)\n"
    "reg.begin_run(cfg['run_id'], cfg['name'])\n"
    "children = []\n"
    "total = cfg['recorded'] + cfg['unrecorded']\n"
    "for i in range(total):\n"
    "    argv = [sys.executable, '-c', cfg['child'], '--run-id', cfg['run_id'],\n"
    "            '--instance', cfg['instance']] + (['ignore-term'] if i == 0 else [])\n"
    "    p = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL,\n"
    "                         stdout=subprocess.PIPE)\n"
    "    grandchild = int(p.stdout.readline())\n"
    "    recorded = i < cfg['recorded']\n"
    "    if recorded:\n"
    "        assert reg.record(p.pid, run_id=cfg['run_id'], worker_id=f\"{cfg['name']}/{i}\",\n"
    "                          node_name=cfg['name'])\n"
    "    children.append({'pid': p.pid, 'grandchild': grandchild, 'recorded': recorded})\n"
    "tmp = cfg['out'] + '.tmp'\n"
    "with open(tmp, 'w') as f:\n"
    "    json.dump({'swept': swept, 'children': children}, f)\n"
    "os.rename(tmp, cfg['out'])\n"
    "time.sleep(90)\n"
)


def uid() -> str:
    return uuid.uuid4().hex[:7]


@dataclass
class FakeNode:
    proc: subprocess.Popen[bytes]
    run_id: str
    swept: list[int] = field(default_factory=list)
    children: list[int] = field(default_factory=list)  # the runtime-like children
    grandchildren: list[int] = field(default_factory=list)
    recorded: list[int] = field(default_factory=list)

    @property
    def everything(self) -> list[int]:
        return self.children + self.grandchildren


class Cluster:
    """Starts fake nodes; at teardown kills every process seen, by pid (same start time)."""

    def __init__(self, data_dir: Path, tmp: Path) -> None:
        self.data_dir = data_dir
        self.tmp = tmp
        self.nodes: list[FakeNode] = []
        self.seen: dict[int, int] = {}  # pid -> start time

    def _remember(self, pid: int) -> None:
        start = process_start_time(pid)
        if start is not None:
            self.seen.setdefault(pid, start)

    def start(self, instance: str, token: str, *, recorded: int = 2,
              unrecorded: int = 0) -> FakeNode:
        run_id = uid()
        out = self.tmp / f"node-{run_id}.json"
        cfg: dict[str, Any] = {
            "data_dir": str(self.data_dir), "instance": instance, "token": token,
            "run_id": run_id, "name": f"fake-{run_id}@itest", "recorded": recorded,
            "unrecorded": unrecorded, "child": CHILD, "out": str(out),
        }
        proc = subprocess.Popen(
            [sys.executable, "-c", FAKE_NODE, json.dumps(cfg)], cwd=REPO,
            env=subprocess_env(), stdin=subprocess.DEVNULL,
        )
        node = FakeNode(proc, run_id)
        self.nodes.append(node)
        self._remember(proc.pid)
        wait_until(lambda: out.exists() or proc.poll() is not None, timeout=60,
                   message=f"fake node {run_id} to start its children")
        assert out.exists(), f"fake node {run_id} exited with {proc.returncode}"
        report = json.loads(out.read_text())
        node.swept = [int(p) for p in report["swept"]]
        for child in report["children"]:
            node.children.append(int(child["pid"]))
            node.grandchildren.append(int(child["grandchild"]))
            if child["recorded"]:
                node.recorded.append(int(child["pid"]))
        for pid in node.everything:
            self._remember(pid)
        return node

    def kill_node(self, node: FakeNode) -> None:
        """SIGKILL the node only: its children run in their own sessions and survive."""
        node.proc.kill()
        node.proc.wait(10)

    def alive(self, pid: int) -> bool:
        """Whether ``pid`` is still the process this cluster saw (not a zombie, not reused)."""
        start = self.seen.get(pid)
        return start is not None and process_start_time(pid) == start

    def wait_gone(self, pids: list[int]) -> None:
        # Killed orphans are reaped by init, or linger as zombies (which count as gone).
        wait_until(lambda: not [p for p in pids if self.alive(p)], timeout=10,
                   message=lambda: f"gone: {[p for p in pids if self.alive(p)]}")

    def close(self) -> None:
        for pid in self.seen:
            if self.alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.kill()
            node.proc.wait(10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "data", tmp_path)
    try:
        yield c
    finally:
        c.close()


def test_sweep_kills_exactly_the_leftovers_of_a_killed_node(cluster: Cluster) -> None:
    instance = f"i-{uid()}"
    dead = cluster.start(instance, "tok", recorded=3, unrecorded=1)
    same_name_other_token = cluster.start(instance, "other-tok", recorded=2)
    other_instance = cluster.start(f"{instance}-b", "tok", recorded=2)
    live = cluster.start(instance, "tok", recorded=2)  # same instance, its node stays up
    assert live.swept == []  # the first node's run is alive: nothing to sweep
    for node in (dead, same_name_other_token, other_instance):
        cluster.kill_node(node)
    everything = [p for n in cluster.nodes for p in n.everything]
    assert all(cluster.alive(p) for p in everything), "children must outlive their node"

    registry = ProcessRegistry(cluster.data_dir, instance, "tok")
    assert sorted(r.pid for r in registry.leftovers()) == sorted(dead.recorded)
    killed = registry.sweep(uid(), grace_s=0.5)

    # The recorded children, and the unrecorded one found by its command line.
    assert sorted(killed) == sorted(dead.children)
    cluster.wait_gone(dead.everything)  # process groups: the grandchildren too
    survivors = [p for n in (same_name_other_token, other_instance, live) for p in n.everything]
    assert [p for p in survivors if not cluster.alive(p)] == []
    assert live.proc.poll() is None
    assert sorted(r.pid for r in registry.records()) == sorted(live.recorded)
    assert registry.leftovers() == []

    # The other instances' leftovers are theirs to sweep, and still listed there.
    for node, name, token in ((same_name_other_token, instance, "other-tok"),
                              (other_instance, f"{instance}-b", "tok")):
        own = ProcessRegistry(cluster.data_dir, name, token)
        assert sorted(r.pid for r in own.leftovers()) == sorted(node.recorded)
        assert sorted(own.sweep(uid(), grace_s=0.5)) == sorted(node.children)
        cluster.wait_gone(node.everything)
    assert all(cluster.alive(p) for p in live.everything)


def test_restarting_node_leaves_no_survivors_of_earlier_runs(cluster: Cluster) -> None:
    """Scenario 8 of snakepit: start, kill -9, restart, twice; each start sweeps."""
    instance = f"i-{uid()}"
    first = cluster.start(instance, "tok", recorded=4, unrecorded=1)
    cluster.kill_node(first)
    second = cluster.start(instance, "tok", recorded=4)
    assert sorted(second.swept) == sorted(first.children)
    cluster.wait_gone(first.everything)
    cluster.kill_node(second)
    third = cluster.start(instance, "tok", recorded=4)
    assert sorted(third.swept) == sorted(second.children)
    cluster.wait_gone(second.everything)
    assert all(cluster.alive(p) for p in third.everything)
    registry = ProcessRegistry(cluster.data_dir, instance, "tok")
    assert sorted(r.pid for r in registry.records()) == sorted(third.recorded)
    assert {r.run_id for r in registry.records()} == {third.run_id}
