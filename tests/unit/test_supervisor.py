"""snakepit_tasks.supervisor: which nodes a host runs, and the command that runs one."""

from __future__ import annotations

import sys

import pytest

from snakepit_tasks.config import Settings, load_settings
from snakepit_tasks.errors import ConfigurationError
from snakepit_tasks.supervisor import node_command, node_specs


@pytest.fixture
def settings() -> Settings:
    return load_settings(
        pools=[
            {"name": "a", "pool_size": 3},
            {"name": "b", "pool_size": 5, "workers_per_node": 2},
            {"name": "c", "pool_size": 2, "workers_per_node": 1},
        ]
    )


def summary(specs: list) -> list[tuple[str, str, int]]:  # type: ignore[type-arg]
    return [(s.name, s.pool.name, s.workers) for s in specs]


def test_one_node_per_pool_by_default() -> None:
    s = load_settings(pools=[{"name": "a", "pool_size": 3}, {"name": "z", "pool_size": 1}])
    assert summary(node_specs(s, None, host="h1")) == [("a@h1", "a", 3), ("z@h1", "z", 1)]


def test_default_host_is_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "myhost")
    assert node_specs(load_settings(), None)[0].name == "default@myhost"


def test_workers_per_node_splits_the_pool(settings: Settings) -> None:
    assert summary(node_specs(settings, ["b"], host="h")) == [
        ("b-0@h", "b", 2),
        ("b-1@h", "b", 2),
        ("b-2@h", "b", 1),
    ]
    assert summary(node_specs(settings, ["c"], host="h")) == [("c-0@h", "c", 1), ("c-1@h", "c", 1)]


def test_selected_pools_only(settings: Settings) -> None:
    assert [s.pool.name for s in node_specs(settings, ["c", "a"], host="h")] == ["c", "c", "a"]
    assert len(node_specs(settings, [], host="h")) == 1 + 3 + 2


def test_unknown_pool_is_a_configuration_error(settings: Settings) -> None:
    with pytest.raises(ConfigurationError, match="'zzz'"):
        node_specs(settings, ["zzz"], host="h")


def test_instance_name_suffix(settings: Settings) -> None:
    s = settings.replace(instance_name="blue")
    names = [spec.name for spec in node_specs(s, None, host="h")]
    assert names == [
        "a.blue@h",
        "b-0.blue@h",
        "b-1.blue@h",
        "b-2.blue@h",
        "c-0.blue@h",
        "c-1.blue@h",
    ]


def test_explicit_name_with_one_pool(settings: Settings) -> None:
    assert node_specs(settings, ["a"], host="h", name="custom@box")[0].name == "custom@box"
    # ignored when more than one pool is chosen (names must be unique)
    names = [s.name for s in node_specs(settings, ["a", "c"], host="h", name="custom@box")]
    assert "custom@box" not in names


def test_node_command(settings: Settings) -> None:
    spec = node_specs(settings, ["a"], host="h")[0]
    cmd = node_command(spec, "debug", settings)
    assert cmd[:3] == [sys.executable, "-m", "celery"]
    assert cmd[cmd.index("-A") + 1] == "snakepit_tasks.node.entry"
    assert "worker" in cmd
    assert cmd[cmd.index("-n") + 1] == "a@h"
    assert cmd[cmd.index("--snakepit-pool") + 1] == "a"
    assert cmd[cmd.index("--snakepit-workers") + 1] == "3"
    assert cmd[cmd.index("-l") + 1] == "debug"
    assert "--without-gossip" in cmd and "--without-mingle" in cmd
    assert "-E" not in cmd
    assert "-E" in node_command(spec, "info", settings.replace(task_events=True))


def test_node_command_for_split_pool(settings: Settings) -> None:
    last = node_specs(settings, ["b"], host="h")[-1]
    cmd = node_command(last, "info", settings)
    assert cmd[cmd.index("--snakepit-workers") + 1] == "1"
    assert cmd[cmd.index("-n") + 1] == "b-2@h"
