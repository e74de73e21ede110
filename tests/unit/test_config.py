"""snakepit_tasks.config: defaults, sources and their precedence, validation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from snakepit_tasks.config import (
    DEFAULT_ADAPTER,
    REMOVED_SETTINGS,
    PoolConfig,
    Settings,
    config_source,
    load_settings,
)
from snakepit_tasks.errors import ConfigurationError


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run each test in an empty directory so no ./pyproject.toml is read by accident."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- defaults ------------------------------------------------------------------------------


def test_defaults_match_original_snakepit() -> None:
    s = load_settings()
    assert s.pool_queue_timeout == 5000
    assert s.pool_max_queue_size == 1000
    assert s.circuit_breaker_failure_threshold == 5
    assert s.circuit_breaker_reset_timeout_ms == 30_000
    assert s.circuit_breaker_half_open_max_calls == 1
    assert s.heartbeat_ping_interval_ms == 2000
    assert s.heartbeat_timeout_ms == 10_000
    assert s.heartbeat_max_missed == 3
    assert s.session_default_ttl == 3600
    assert s.session_max_sessions == 10_000
    assert s.session_cleanup_interval == 60_000
    assert s.retry_backoff_sequence == (100, 200, 400, 800, 1600)
    assert s.retry_max_attempts == 3
    assert s.retry_max_backoff_ms == 30_000
    assert s.retry_jitter_factor == 0.25
    assert s.crash_barrier_enabled is True
    assert s.crash_barrier_taint_duration_ms == 60_000
    assert s.crash_barrier_max_restarts == 1
    assert s.health_monitor_crash_window_ms == 60_000
    assert s.health_monitor_max_crashes == 10
    assert s.default_command_timeout == 300_000
    assert s.pool_streaming_timeout == 900_000
    assert s.pool_startup_timeout == 10_000
    assert s.graceful_shutdown_timeout_ms == 6_000
    assert s.pool_max_workers == 150
    assert s.pool_startup_batch_size == 10
    assert s.pool_startup_batch_delay_ms == 500
    assert s.affinity == "hint"
    assert s == Settings(pools=(PoolConfig(),))


def test_no_pools_gives_implicit_default_pool_with_showcase_adapter() -> None:
    s = load_settings()
    assert [p.name for p in s.pools] == ["default"]
    assert s.pools[0].adapter == DEFAULT_ADAPTER == "adapters.showcase:ShowcaseAdapter"
    assert s.default_pool_name == "default"
    assert s.pool() is s.pools[0]
    assert s.pool("default") is s.pools[0]


def test_empty_pool_list_also_gives_default_pool() -> None:
    assert [p.name for p in load_settings(pools=[]).pools] == ["default"]


def test_broker_and_backend_fall_back_to_redis_url() -> None:
    s = load_settings(redis_url="redis://example:6380/2")
    assert s.broker == "redis://example:6380/2"
    assert s.backend == "redis://example:6380/2"
    s = load_settings(
        redis_url="redis://example:6380/2",
        broker_url="amqp://guest@rabbit//",
        result_backend="redis://other/3",
    )
    assert s.broker == "amqp://guest@rabbit//"
    assert s.backend == "redis://other/3"
    assert s.redis_url == "redis://example:6380/2"


def test_pool_capacity_depends_on_profile() -> None:
    s = load_settings(
        pools=[
            {"name": "p", "pool_size": 3},
            {"name": "t", "worker_profile": "thread", "threads_per_worker": 4},
        ]
    )
    assert s.pool("p").capacity == 1
    assert s.pool("t").capacity == 4


# -- sources and precedence ----------------------------------------------------------------


def test_snakepit_config_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(
        tmp_path / "sp.toml",
        """
redis_url = "redis://file:1/0"
pool_queue_timeout = 1234
retry_backoff_sequence = [1, 2]

[[pools]]
name = "alpha"
adapter = "a.b:C"
pool_size = 3
adapter_env = { X = 1 }

[[pools]]
name = "beta"
adapter = "a.b:D"
worker_profile = "thread"
threads_per_worker = 4
affinity = "strict_queue"
""",
    )
    monkeypatch.setenv("SNAKEPIT_CONFIG", str(cfg))
    s = load_settings()
    assert s.redis_url == "redis://file:1/0"
    assert s.pool_queue_timeout == 1234
    assert s.retry_backoff_sequence == (1, 2)
    assert [p.name for p in s.pools] == ["alpha", "beta"]
    assert s.pool("alpha").pool_size == 3
    assert s.pool("alpha").adapter_env == {"X": "1"}
    assert s.pool("beta").capacity == 4
    assert s.pool("beta").affinity == "strict_queue"
    assert s.default_pool_name == "alpha"


def test_config_file_argument(tmp_path: Path) -> None:
    cfg = write(tmp_path / "x.toml", "pool_queue_timeout = 42\n")
    assert load_settings(cfg).pool_queue_timeout == 42
    assert load_settings(str(cfg)).pool_queue_timeout == 42


def test_missing_config_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAKEPIT_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigurationError, match="nope.toml"):
        load_settings()


def test_invalid_toml_is_a_configuration_error(tmp_path: Path) -> None:
    cfg = write(tmp_path / "bad.toml", "pool_queue_timeout = = 3\n")
    with pytest.raises(ConfigurationError, match="bad.toml"):
        load_settings(cfg)


def test_pyproject_tool_snakepit_table_is_read(_empty_cwd: Path) -> None:
    write(
        _empty_cwd / "pyproject.toml",
        """
[project]
name = "someapp"

[tool.snakepit]
pool_queue_timeout = 777
session_default_ttl = 60

[[tool.snakepit.pools]]
name = "py"
adapter = "x:Y"
""",
    )
    s = load_settings()
    assert s.pool_queue_timeout == 777
    assert s.session_default_ttl == 60
    assert [p.name for p in s.pools] == ["py"]


def test_pyproject_without_snakepit_table_gives_defaults(_empty_cwd: Path) -> None:
    write(_empty_cwd / "pyproject.toml", '[project]\nname = "x"\n')
    assert load_settings() == load_settings(pools=[])


def test_snakepit_config_wins_over_pyproject(
    _empty_cwd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(_empty_cwd / "pyproject.toml", "[tool.snakepit]\npool_queue_timeout = 1\n")
    cfg = write(tmp_path / "sp.toml", "pool_queue_timeout = 2\n")
    monkeypatch.setenv("SNAKEPIT_CONFIG", str(cfg))
    assert load_settings().pool_queue_timeout == 2


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(
        tmp_path / "sp.toml",
        'redis_url = "redis://file/0"\npool_queue_timeout = 1\nheartbeat_enabled = true\n',
    )
    monkeypatch.setenv("SNAKEPIT_CONFIG", str(cfg))
    monkeypatch.setenv("SNAKEPIT_REDIS_URL", "redis://env/1")
    monkeypatch.setenv("SNAKEPIT_BROKER_URL", "amqp://env//")
    monkeypatch.setenv("SNAKEPIT_POOL_QUEUE_TIMEOUT", "2_500")
    monkeypatch.setenv("SNAKEPIT_HEARTBEAT_ENABLED", "off")
    monkeypatch.setenv("SNAKEPIT_CRASH_BARRIER_ENABLED", "no")
    monkeypatch.setenv("SNAKEPIT_TASK_EVENTS", "yes")
    monkeypatch.setenv("SNAKEPIT_RETRY_BACKOFF_SEQUENCE", "1, 2,3")
    monkeypatch.setenv("SNAKEPIT_RETRY_JITTER_FACTOR", "0.5")
    s = load_settings()
    assert s.redis_url == "redis://env/1"
    assert s.broker == "amqp://env//"
    assert s.backend == "redis://env/1"
    assert s.pool_queue_timeout == 2500
    assert s.heartbeat_enabled is False
    assert s.crash_barrier_enabled is False
    assert s.task_events is True
    assert s.retry_backoff_sequence == (1, 2, 3)
    assert s.retry_jitter_factor == 0.5


def test_empty_environment_variable_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAKEPIT_POOL_QUEUE_TIMEOUT", "")
    assert load_settings().pool_queue_timeout == 5000


def test_pools_from_environment_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path / "sp.toml", '[[pools]]\nname = "fromfile"\n')
    monkeypatch.setenv("SNAKEPIT_CONFIG", str(cfg))
    monkeypatch.setenv(
        "SNAKEPIT_POOLS",
        json.dumps([{"name": "a", "pool_size": 1}, {"name": "b", "adapter": "m:C"}]),
    )
    s = load_settings()
    assert [p.name for p in s.pools] == ["a", "b"]
    assert s.pool("a").pool_size == 1
    assert s.pool("b").adapter == "m:C"


def test_pools_environment_bad_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAKEPIT_POOLS", "[{name: a}]")
    with pytest.raises(ConfigurationError, match="SNAKEPIT_POOLS"):
        load_settings()


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("SNAKEPIT_POOL_QUEUE_TIMEOUT", "soon"),
        ("SNAKEPIT_HEARTBEAT_ENABLED", "maybe"),
        ("SNAKEPIT_RETRY_BACKOFF_SEQUENCE", "1,two"),
        ("SNAKEPIT_RETRY_JITTER_FACTOR", "lots"),
    ],
)
def test_bad_environment_value_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    setting = var.removeprefix("SNAKEPIT_").lower()
    with pytest.raises(ConfigurationError, match=setting) as info:
        load_settings()
    assert info.value.details == {"setting": setting}


def test_kwargs_override_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = write(tmp_path / "sp.toml", "pool_queue_timeout = 1\nsession_default_ttl = 5\n")
    monkeypatch.setenv("SNAKEPIT_CONFIG", str(cfg))
    monkeypatch.setenv("SNAKEPIT_POOL_QUEUE_TIMEOUT", "2")
    s = load_settings(pool_queue_timeout=3)
    assert s.pool_queue_timeout == 3
    assert s.session_default_ttl == 5  # untouched by env and kwargs: the file's value


def test_unrelated_snakepit_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAKEPIT_NODE_POOL", "x")
    monkeypatch.setenv("SNAKEPIT_PARENT_PID", "1")
    load_settings()


def test_replace_validates_and_keeps_the_rest() -> None:
    s = load_settings(pools=[{"name": "a"}, {"name": "b"}], pool_queue_timeout=9)
    r = s.replace(default_pool="b")
    assert r.default_pool_name == "b"
    assert r.pool_queue_timeout == 9
    assert r.pools == s.pools
    with pytest.raises(ConfigurationError, match="nonsense"):
        s.replace(nonsense=1)
    with pytest.raises(ConfigurationError, match="default_pool"):
        s.replace(default_pool="zzz")


# -- validation ----------------------------------------------------------------------------


def test_unknown_setting_is_named() -> None:
    with pytest.raises(ConfigurationError, match="pool_queue_timout") as info:
        load_settings(pool_queue_timout=5)
    assert info.value.details["unknown"] == ["pool_queue_timout"]


def test_unknown_setting_in_file_is_named(tmp_path: Path) -> None:
    cfg = write(tmp_path / "sp.toml", "colour = 'blue'\n")
    with pytest.raises(ConfigurationError, match="colour"):
        load_settings(cfg)


def test_unknown_setting_in_a_file_names_the_file_and_the_closest_setting(
    tmp_path: Path,
) -> None:
    cfg = write(tmp_path / "sp.toml", "pool_queue_timout = 5\n")
    with pytest.raises(ConfigurationError) as info:
        load_settings(cfg)
    message = str(info.value)
    assert str(cfg) in message
    assert "pool_queue_timout (did you mean pool_queue_timeout?)" in message


def test_pool_instead_of_pools_is_pointed_out(tmp_path: Path) -> None:
    cfg = write(tmp_path / "sp.toml", "[[pool]]\nname = 'a'\n")
    with pytest.raises(ConfigurationError, match=r"\[\[pool\]\] \(did you mean \[\[pools\]\]\?\)"):
        load_settings(cfg)


def test_unknown_keyword_is_suggested() -> None:
    with pytest.raises(ConfigurationError, match=r"keyword arguments: redis_ulr \(did you mean "
                       r"redis_url\?\)"):
        load_settings(redis_ulr="redis://x")


def test_unknown_pool_key_is_suggested() -> None:
    with pytest.raises(ConfigurationError, match=r"adaptor \(did you mean adapter\?\)"):
        load_settings(pools=[{"name": "a", "adaptor": "m:C"}])


def test_a_bad_value_in_a_file_names_the_file(tmp_path: Path) -> None:
    cfg = write(tmp_path / "sp.toml", "[[pools]]\nname = 'a'\nworker_profile = 'proc'\n")
    with pytest.raises(ConfigurationError, match="worker_profile") as info:
        load_settings(cfg)
    assert str(cfg) in str(info.value)


def test_config_source_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    source = config_source()
    assert source.file is None and source.env == ()
    assert "no configuration file" in source.describe()
    assert "one pool 'default' on the showcase adapter" in source.describe()
    monkeypatch.setenv("SNAKEPIT_REDIS_URL", "redis://elsewhere:6379/0")
    assert config_source().env == ("SNAKEPIT_REDIS_URL",)
    assert "environment: SNAKEPIT_REDIS_URL" in config_source().describe()


def test_config_source_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      _empty_cwd: Path) -> None:
    cfg = write(tmp_path / "sp.toml", "pool_queue_timeout = 5\n")
    monkeypatch.setenv("SNAKEPIT_CONFIG", str(cfg))
    assert config_source().file == cfg.resolve()
    assert config_source().describe().startswith(f"file {cfg.resolve()}")
    monkeypatch.delenv("SNAKEPIT_CONFIG")
    write(_empty_cwd / "pyproject.toml", "[tool.snakepit]\npool_queue_timeout = 5\n")
    assert config_source().describe() == f"[tool.snakepit] in {_empty_cwd / 'pyproject.toml'}"


def test_unknown_pool_key_is_named() -> None:
    with pytest.raises(ConfigurationError, match="pool_sise") as info:
        load_settings(pools=[{"name": "a", "pool_sise": 2}])
    assert info.value.details["unknown"] == ["pool_sise"]
    assert "pools[0]" in str(info.value)


@pytest.mark.parametrize(
    ("pool", "fragment"),
    [
        ({"name": "a", "worker_profile": "fork"}, "worker_profile"),
        ({"name": "a", "affinity": "sticky"}, "affinity"),
        ({"name": "a", "adapter": "no_colon_here"}, "module:Class"),
        ({"name": "a", "pool_size": 0}, "pool_size"),
        ({"name": "a", "threads_per_worker": 0}, "threads_per_worker"),
        ({"name": "has space"}, "names are"),
        ({"name": ""}, "names are"),
        ({"name": "a", "pool_size": "2"}, "pool_size"),
        ({"name": "a", "pool_size": True}, "pool_size"),
        ({"name": "a", "adapter_env": ["X"]}, "adapter_env"),
    ],
)
def test_bad_pool_values(pool: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        load_settings(pools=[pool])


def test_pool_entry_must_be_a_table() -> None:
    with pytest.raises(ConfigurationError, match="pools"):
        load_settings(pools=["default"])
    with pytest.raises(ConfigurationError, match="pools"):
        load_settings(pools="default")


def test_duplicate_pool_names() -> None:
    with pytest.raises(ConfigurationError, match="twice: a"):
        load_settings(pools=[{"name": "a"}, {"name": "b"}, {"name": "a"}])


def test_bad_default_pool() -> None:
    with pytest.raises(ConfigurationError, match="default_pool 'zzz'"):
        load_settings(pools=[{"name": "a"}], default_pool="zzz")
    assert load_settings(pools=[{"name": "a"}, {"name": "b"}], default_pool="b").pool().name == "b"


def test_bad_global_affinity() -> None:
    with pytest.raises(ConfigurationError, match="affinity"):
        load_settings(affinity="sometimes")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("pool_queue_timeout", "5000"),
        ("pool_queue_timeout", 5.5),
        ("pool_queue_timeout", False),
        ("heartbeat_enabled", "true"),
        ("retry_backoff_sequence", 100),
        ("retry_backoff_sequence", [1, "x"]),
        ("redis_url", 6379),
    ],
)
def test_wrong_types_are_rejected(key: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=key):
        load_settings(**{key: value})


def test_int_is_accepted_for_float_setting() -> None:
    s = load_settings(retry_jitter_factor=1)
    assert s.retry_jitter_factor == 1.0
    assert isinstance(s.retry_jitter_factor, float)


def test_settings_pool_unknown_name() -> None:
    s = load_settings(pools=[{"name": "a"}, {"name": "b"}])
    with pytest.raises(ConfigurationError, match="'zzz'.*a, b") as info:
        s.pool("zzz")
    assert info.value.details == {"pool": "zzz"}


def test_pool_config_objects_are_accepted() -> None:
    s = load_settings(pools=[PoolConfig(name="obj", pool_size=4)])
    assert s.pool("obj").pool_size == 4


def test_pool_size_over_pool_max_workers_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="pool_max_workers"):
        load_settings(pools=[{"name": "big", "pool_size": 200}])
    assert load_settings(pools=[{"name": "big", "pool_size": 200}], pool_max_workers=200)


@pytest.mark.parametrize("name", sorted(REMOVED_SETTINGS))
def test_removed_settings_fail_loudly(name: str, monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"{name}' is no longer used"):
        load_settings(**{name: 1})
    path = tmp_path / "old.toml"
    path.write_text(f"{name} = 1\n")
    with pytest.raises(ConfigurationError, match="no longer used"):
        load_settings(path)
    monkeypatch.setenv("SNAKEPIT_" + name.upper(), "1")
    with pytest.raises(ConfigurationError, match="no longer used"):
        load_settings()


def test_every_setting_is_read_somewhere() -> None:
    """No setting that nothing reads: each name appears in the package outside config.py."""
    import pathlib

    import snakepit_tasks

    root = pathlib.Path(snakepit_tasks.__file__).parent
    sources = "\n".join(
        p.read_text() for p in root.rglob("*.py")
        if p.name != "config.py" and "_proto" not in p.parts
    )
    read_by_config = {"broker_url", "result_backend", "pool_max_workers"}  # properties, checks
    unread = [
        f.name for f in dataclasses.fields(Settings)
        if f.name not in sources and f.name not in read_by_config
    ]
    assert not unread, f"settings nothing reads: {unread}"
