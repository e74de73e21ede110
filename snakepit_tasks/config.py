"""Settings: one frozen dataclass, read from a TOML file, SNAKEPIT_* variables and keywords.

Precedence, later wins: defaults < TOML file (``SNAKEPIT_CONFIG``, else ``[tool.snakepit]`` in
``./pyproject.toml``) < environment < keyword arguments. Unknown keys are an error. Durations
are milliseconds unless the name says otherwise; defaults follow the original snakepit.
Nothing is read at import time: call :func:`load_settings`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigurationError
from .telemetry.logs import CATEGORIES, LOG_LEVELS

WORKER_PROFILES = ("process", "thread")
ZERO_COPY_TRANSPORTS = ("auto", "shm", "flight")
WORKER_START_METHODS = ("fork", "spawn")
#: What a pool's ``requires`` or a call's ``requires=`` may name (sp.hardware.capabilities()).
CAPABILITIES = ("cpu", "cuda", "rocm", "mps", "avx", "avx2", "avx512")
DEVICES = ("", "auto", "cpu", "cuda", "mps", "rocm")
AFFINITY_MODES = ("hint", "strict_queue", "strict_fail_fast")
POOL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")
DEFAULT_ADAPTER = "adapters.showcase:ShowcaseAdapter"


@dataclass(frozen=True)
class PoolConfig:
    """One named pool: which adapter its workers run, how many, and how."""

    name: str = "default"
    adapter: str = DEFAULT_ADAPTER
    pool_size: int = 2
    worker_profile: str = "process"
    threads_per_worker: int = 10
    affinity: str | None = None
    startup_batch_size: int | None = None
    startup_batch_delay_ms: int | None = None
    workers_per_node: int = 0
    adapter_env: dict[str, str] = field(default_factory=dict)
    # Global host tools ("module:function"): run inside the node, visible to every session
    host_tools: tuple[str, ...] = ()
    # Capabilities the host must have (sp.hardware.capabilities() names: "cuda", "avx2", ...)
    requires: tuple[str, ...] = ()
    # The device adapters use: "" (none named), "cpu", "cuda", "cuda:1", "mps", "rocm", or
    # "auto" (each worker its own GPU on a multi-GPU host, else mps, else cpu)
    device: str = ""

    @property
    def capacity(self) -> int:
        """Calls one worker of this pool serves at once."""
        return self.threads_per_worker if self.worker_profile == "thread" else 1


@dataclass(frozen=True)
class Settings:
    """Every setting snakepit-tasks reads, with its default."""

    # Connections
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = None
    result_backend: str | None = None
    # Identity of this host's nodes (orphan control tells instances apart by these)
    instance_name: str = ""
    instance_token: str = ""
    data_dir: str = ""
    # Pools
    pools: tuple[PoolConfig, ...] = ()
    default_pool: str | None = None
    affinity: str = "hint"
    # Timeouts (ms)
    default_command_timeout: int = 300_000
    pool_streaming_timeout: int = 900_000
    pool_startup_timeout: int = 10_000
    pool_queue_timeout: int = 5_000
    graceful_shutdown_timeout_ms: int = 6_000
    # Pool sizing
    pool_max_queue_size: int = 1_000
    pool_max_workers: int = 150
    pool_startup_batch_size: int = 10
    pool_startup_batch_delay_ms: int = 500
    # How a node starts its workers: "fork" from a zygote that has imported the runtime once
    # (fast), or "spawn" each in a fresh interpreter
    worker_start_method: str = "fork"
    # Restart intensity of one worker: more restarts than this within the window pause it
    worker_starter_max_restarts: int = 3
    worker_starter_max_seconds: int = 5
    # Retry policy (calls made with ``retry=True``; see RetryPolicy.from_settings)
    retry_max_attempts: int = 3
    retry_backoff_sequence: tuple[int, ...] = (100, 200, 400, 800, 1600)
    retry_max_backoff_ms: int = 30_000
    retry_jitter_factor: float = 0.25
    # Circuit breaker (shared through Redis; per pool, or per pool and tool)
    circuit_breaker_enabled: bool = True
    circuit_breaker_per_tool: bool = False
    circuit_breaker_failure_threshold: int = 5
    circuit_breaker_reset_timeout_ms: int = 30_000
    circuit_breaker_half_open_max_calls: int = 1
    # Crash barrier
    crash_barrier_enabled: bool = True
    crash_barrier_taint_duration_ms: int = 60_000
    crash_barrier_max_restarts: int = 1
    crash_barrier_backoff_ms: tuple[int, ...] = (50, 100, 200)
    # Health monitor
    health_monitor_crash_window_ms: int = 60_000
    health_monitor_max_crashes: int = 10
    # Heartbeat
    heartbeat_enabled: bool = True
    heartbeat_ping_interval_ms: int = 2_000
    heartbeat_timeout_ms: int = 10_000
    heartbeat_max_missed: int = 3
    # Node liveness in Redis
    node_lease_ttl_ms: int = 5_000
    node_lease_interval_ms: int = 1_000
    # Session store: the index of sessions is pruned every cleanup interval (ms); a warning
    # is logged once the count reaches session_warning_threshold × session_max_sessions
    session_cleanup_interval: int = 60_000
    session_default_ttl: int = 3_600
    session_max_sessions: int = 10_000
    session_warning_threshold: float = 0.8
    # Worker recycling (0 disables)
    worker_ttl: int = 0
    worker_max_requests: int = 0
    memory_threshold_mb: int = 0
    # Streaming: chunks kept per call, retention after the call ends (s), largest chunk
    stream_max_len: int = 10_000
    stream_retention: int = 3_600
    stream_max_chunk_bytes: int = 4 * 1024 * 1024
    # Size limits of one call: its encoded arguments, and its encoded result (larger data
    # belongs on the zero-copy path)
    max_call_bytes: int = 16 * 1024 * 1024
    max_result_bytes: int = 64 * 1024 * 1024
    # Zero-copy: values from this size travel as handles to shared memory (or Arrow Flight);
    # the owner frees an unreleased one after the TTL; transport "auto" | "shm" | "flight";
    # the address Flight servers listen on (and advertise; "0.0.0.0": every interface, the
    # host name advertised); how long a released segment stays ready for reuse
    zero_copy_threshold_bytes: int = 1024 * 1024
    zero_copy_ttl_ms: int = 300_000
    zero_copy_transport: str = "auto"
    zero_copy_flight_host: str = "127.0.0.1"
    zero_copy_arena_idle_ms: int = 30_000
    # Broker: seconds before Redis re-delivers an unacknowledged message
    visibility_timeout: int = 3_600
    # Synchronous calls (execute, execute_in_session) travel over Redis lists to the node
    # instead of Celery's task protocol; execute_async/.delay/canvas/beat stay on Celery
    fast_lane: bool = True
    # Host tools: the longest a node waits for a host tool's answer (never past the call's
    # own deadline); registrants hold a lease of node_lease_ttl_ms, refreshed every
    # node_lease_interval_ms
    host_tool_timeout_ms: int = 30_000
    # Celery events for Flower
    task_events: bool = False
    # Observability (README "Observability"): logging (silent by default: errors only),
    # telemetry handlers run in each node ("module:function" hooks that call
    # snakepit_tasks.telemetry.attach), OpenTelemetry (extra `otel`), Prometheus (extra
    # `metrics`: each node serves /metrics on metrics_host:metrics_port; 0 = off)
    log_level: str = "error"
    log_categories: tuple[str, ...] = ()
    telemetry_handlers: tuple[str, ...] = ()
    otel_enabled: bool = False
    otel_setup: str = ""
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"

    @property
    def broker(self) -> str:
        """The Celery broker URL (Redis unless ``broker_url`` says otherwise)."""
        return self.broker_url or self.redis_url

    @property
    def backend(self) -> str:
        """The Celery result backend URL."""
        return self.result_backend or self.redis_url

    @property
    def default_pool_name(self) -> str:
        """The pool a call goes to when it names none."""
        if self.default_pool:
            return self.default_pool
        return self.pools[0].name if self.pools else "default"

    def pool(self, name: str | None = None) -> PoolConfig:
        """The configuration of pool ``name``; ConfigurationError when unknown."""
        name = name or self.default_pool_name
        for p in self.pools:
            if p.name == name:
                return p
        raise ConfigurationError(
            f"pool {name!r} is not configured; configured pools: "
            + (", ".join(p.name for p in self.pools) or "none"),
            {"pool": name},
        )

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and validated."""
        return _build({**_as_dict(self), **changes})


#: Settings earlier versions had; naming one is an error that says why it went.
REMOVED_SETTINGS = {
    "pool_request_timeout": "a call's limit is its `timeout` (default_command_timeout)",
    "checkout_timeout": "the wait for a free worker is pool_queue_timeout",
    "grpc_worker_execute_timeout": "the gRPC deadline is the call's own deadline "
    "(`timeout`, default_command_timeout)",
    "grpc_worker_stream_timeout": "the gRPC deadline of a stream is its own deadline "
    "(`timeout`, pool_streaming_timeout)",
    "pool_reconcile_interval_ms": "workers are restarted as soon as they exit; there is no "
    "reconcile loop",
    "pool_reconcile_batch_size": "workers are restarted as soon as they exit; there is no "
    "reconcile loop",
    "health_monitor_check_interval": "health is computed from the crash window "
    "(health_monitor_crash_window_ms) whenever it is asked for",
}

_SETTING_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_POOL_FIELDS = {f.name: f for f in dataclasses.fields(PoolConfig)}
_HINTS = typing.get_type_hints(Settings)
_POOL_HINTS = typing.get_type_hints(PoolConfig)


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Settings from the TOML file, then ``SNAKEPIT_*`` variables, then ``overrides``."""
    path, table, from_file = _read_file(config_file)
    where = f"{table} in {str(path)!r}" if table else f"config file {str(path)!r}"
    _check_names(from_file, where)
    _check_names(overrides, "keyword arguments")
    values: dict[str, Any] = {}
    values.update(from_file)
    values.update(_read_env(os.environ))
    values.update(overrides)
    try:
        return _build(values)
    except ConfigurationError as exc:
        if path is None or str(path) in exc.message:
            raise
        raise type(exc)(f"{exc.message} (settings read from {where})", exc.details) from None


@dataclass(frozen=True)
class ConfigSource:
    """Where :func:`load_settings` reads its settings from (for doctor, status, errors)."""

    #: The TOML file read, or None when only defaults and the environment apply.
    file: Path | None
    #: The table the settings are in ("" for a whole file, "[tool.snakepit]" for pyproject).
    table: str
    #: The ``SNAKEPIT_*`` variables that set a setting.
    env: tuple[str, ...]

    def describe(self) -> str:
        """One line: the file (or that there is none) and the variables that apply."""
        if self.file is None:
            text = ("no configuration file (SNAKEPIT_CONFIG is unset and ./pyproject.toml has "
                    "no [tool.snakepit]): defaults")
            if "SNAKEPIT_POOLS" not in self.env:
                text += ", one pool 'default' on the showcase adapter"
        elif self.table:
            text = f"{self.table} in {self.file}"
        else:
            text = f"file {self.file}"
        if self.env:
            text += "; environment: " + ", ".join(self.env)
        return text


def config_source(config_file: str | os.PathLike[str] | None = None) -> ConfigSource:
    """Where ``load_settings(config_file)`` would read from, without validating anything."""
    path = config_file or os.environ.get("SNAKEPIT_CONFIG")
    file: Path | None = None
    table = ""
    if path:
        file = Path(path).resolve()
    else:
        pyproject = Path.cwd() / "pyproject.toml"
        try:
            has_table = bool(tomllib.loads(pyproject.read_text()).get("tool", {}).get("snakepit"))
        except (OSError, tomllib.TOMLDecodeError, AttributeError):
            has_table = False
        if has_table:
            file, table = pyproject, "[tool.snakepit]"
    names = [*_SETTING_FIELDS, *REMOVED_SETTINGS]
    env = tuple(
        f"SNAKEPIT_{n.upper()}" for n in names if os.environ.get(f"SNAKEPIT_{n.upper()}")
    )
    return ConfigSource(file, table, env)


def _read_file(
    config_file: str | os.PathLike[str] | None,
) -> tuple[Path | None, str, dict[str, Any]]:
    """(the file read, its table, the settings in it); (None, "", {}) when there is none."""
    path = config_file or os.environ.get("SNAKEPIT_CONFIG")
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigurationError(
                f"config file {str(p)!r} does not exist (SNAKEPIT_CONFIG or --config names "
                "it); fix the path, or unset it to run on defaults",
                {"path": str(p)},
            )
        return p, "", _parse_toml(p, table=None)
    pyproject = Path.cwd() / "pyproject.toml"
    if pyproject.is_file():
        values = _parse_toml(pyproject, table=("tool", "snakepit"))
        if values:
            return pyproject, "[tool.snakepit]", values
    return None, "", {}


def _parse_toml(path: Path, table: tuple[str, ...] | None) -> dict[str, Any]:
    try:
        data: Any = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"cannot read config file {str(path)!r}: {exc}") from None
    for part in table or ():
        data = data.get(part, {})
    if not isinstance(data, dict):
        raise ConfigurationError(f"{str(path)!r}: expected a table of settings")
    return dict(data)


def suggest(name: str, known: typing.Iterable[str]) -> str:
    """``name`` with a "did you mean" for the closest of ``known`` (difflib), if any is close."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"{name} (did you mean {close[0]}?)" if close else name


def _check_names(values: typing.Mapping[str, Any], where: str = "") -> None:
    """Raise for removed or unknown setting names in ``values`` (read from ``where``)."""
    at = f" in {where}" if where else ""
    removed = sorted(set(values) & set(REMOVED_SETTINGS))
    if removed:
        raise ConfigurationError(
            "; ".join(f"setting {n!r} is no longer used: {REMOVED_SETTINGS[n]}; remove it{at}"
                      for n in removed),
            {"removed": removed},
        )
    unknown = sorted(set(values) - set(_SETTING_FIELDS))
    if unknown:
        named = []
        for n in unknown:
            value = values[n]
            if isinstance(value, list) and all(isinstance(v, dict) for v in value) and (
                difflib.get_close_matches(n, ["pools"], n=1, cutoff=0.6)
            ):
                named.append(f"[[{n}]] (did you mean [[pools]]?)")
            else:
                named.append(suggest(n, _SETTING_FIELDS))
        raise ConfigurationError(
            f"unknown setting(s){at}: {', '.join(named)}; the settings are the fields of "
            "snakepit_tasks.config.Settings",
            {"unknown": unknown},
        )


def _read_env(env: typing.Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in REMOVED_SETTINGS:
        if env.get("SNAKEPIT_" + name.upper()):
            values[name] = env["SNAKEPIT_" + name.upper()]  # rejected by _build, by name
    for name in _SETTING_FIELDS:
        raw = env.get("SNAKEPIT_" + name.upper())
        if raw is None or raw == "":
            continue
        if name == "pools":
            try:
                values[name] = json.loads(raw)
            except ValueError as exc:
                raise ConfigurationError(f"SNAKEPIT_POOLS is not valid JSON: {exc}") from None
        else:
            values[name] = _coerce_text(name, raw, _HINTS[name])
    return values


def _coerce_text(name: str, raw: str, hint: Any) -> Any:
    base = _strip_optional(hint)
    try:
        if base is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if base is int:
            return int(raw.replace("_", ""))
        if base is float:
            return float(raw)
        if typing.get_origin(base) is tuple:
            item = int if typing.get_args(base)[0] is int else str
            return tuple(item(x) for x in raw.replace(" ", "").split(",") if x)
        return raw
    except ValueError as exc:
        raise ConfigurationError(f"setting {name!r}: {exc}", {"setting": name}) from None


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _check_type(where: str, value: Any, hint: Any) -> Any:
    base = _strip_optional(hint)
    if value is None and base is not hint:
        return None
    origin = typing.get_origin(base)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigurationError(f"{where}: expected a list, got {value!r}")
        item = typing.get_args(base)[0]
        return tuple(_check_type(where, v, item) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigurationError(f"{where}: expected a table, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, bool):
        raise ConfigurationError(f"{where}: expected an integer, got {value!r}")
    if isinstance(base, type) and not isinstance(value, base):
        raise ConfigurationError(
            f"{where}: expected {base.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _build_pool(raw: Any, index: int) -> PoolConfig:
    if isinstance(raw, PoolConfig):
        raw = dataclasses.asdict(raw)
    if not isinstance(raw, dict):
        raise ConfigurationError(f"pools[{index}]: expected a table, got {raw!r}")
    unknown = sorted(set(raw) - set(_POOL_FIELDS))
    if unknown:
        raise ConfigurationError(
            f"pools[{index}]: unknown key(s) "
            f"{', '.join(suggest(k, _POOL_FIELDS) for k in unknown)}; known: "
            + ", ".join(_POOL_FIELDS),
            {"unknown": unknown},
        )
    values = {k: _check_type(f"pools[{index}].{k}", v, _POOL_HINTS[k]) for k, v in raw.items()}
    pool = PoolConfig(**values)
    where = f"pool {pool.name!r}"
    if not POOL_NAME_RE.match(pool.name):
        raise ConfigurationError(
            f"{where}: names are letters, digits, '_' and '-', at most 64 characters"
        )
    if pool.worker_profile not in WORKER_PROFILES:
        raise ConfigurationError(
            f"{where}: worker_profile must be one of {', '.join(WORKER_PROFILES)}, "
            f"got {pool.worker_profile!r}"
        )
    if pool.affinity is not None and pool.affinity not in AFFINITY_MODES:
        raise ConfigurationError(
            f"{where}: affinity must be one of {', '.join(AFFINITY_MODES)}, got {pool.affinity!r}"
        )
    if ":" not in pool.adapter:
        raise ConfigurationError(
            f"{where}: adapter must be 'module:Class', got {pool.adapter!r}"
        )
    for spec in pool.host_tools:
        if spec.count(":") != 1 or not all(spec.partition(":")[::2]):
            raise ConfigurationError(
                f"{where}: host_tools entries must be 'module:function', got {spec!r}"
            )
    if pool.pool_size < 1 or pool.threads_per_worker < 1:
        raise ConfigurationError(f"{where}: pool_size and threads_per_worker must be >= 1")
    unknown_caps = [c for c in pool.requires if c not in CAPABILITIES]
    if unknown_caps:
        raise ConfigurationError(
            f"{where}: requires names unknown capabilities {', '.join(map(repr, unknown_caps))}; "
            f"known: {', '.join(CAPABILITIES)}"
        )
    kind, _, number = pool.device.partition(":")
    if kind not in DEVICES or (number and (kind not in ("cuda", "rocm") or not number.isdigit())):
        raise ConfigurationError(
            f"{where}: device must be auto, cpu, cuda, cuda:N, mps, rocm or rocm:N, "
            f"got {pool.device!r}"
        )
    return pool


def _build(values: dict[str, Any]) -> Settings:
    _check_names(values)
    checked: dict[str, Any] = {}
    for name, value in values.items():
        if name == "pools":
            if not isinstance(value, (list, tuple)):
                raise ConfigurationError(f"pools: expected a list of tables, got {value!r}")
            checked[name] = tuple(_build_pool(p, i) for i, p in enumerate(value))
        else:
            checked[name] = _check_type(f"setting {name!r}", value, _HINTS[name])
    if not checked.get("pools"):
        checked["pools"] = (PoolConfig(),)
    names = [p.name for p in checked["pools"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigurationError(f"pool name(s) used twice: {', '.join(dupes)}")
    settings = Settings(**checked)
    if settings.host_tool_timeout_ms < 1:
        raise ConfigurationError(
            f"host_tool_timeout_ms must be >= 1, got {settings.host_tool_timeout_ms}"
        )
    if settings.affinity not in AFFINITY_MODES:
        raise ConfigurationError(
            f"affinity must be one of {', '.join(AFFINITY_MODES)}, got {settings.affinity!r}"
        )
    if settings.worker_start_method not in WORKER_START_METHODS:
        raise ConfigurationError(
            f"worker_start_method must be one of {', '.join(WORKER_START_METHODS)}, got "
            f"{settings.worker_start_method!r}"
        )
    if settings.zero_copy_transport not in ZERO_COPY_TRANSPORTS:
        raise ConfigurationError(
            f"zero_copy_transport must be one of {', '.join(ZERO_COPY_TRANSPORTS)}, got "
            f"{settings.zero_copy_transport!r}"
        )
    if settings.zero_copy_threshold_bytes < 0 or settings.zero_copy_ttl_ms <= 0:
        raise ConfigurationError(
            "zero_copy_threshold_bytes must be >= 0 and zero_copy_ttl_ms > 0"
        )
    _check_observability(settings)
    for p in settings.pools:
        if p.pool_size > settings.pool_max_workers:
            raise ConfigurationError(
                f"pool {p.name!r}: pool_size {p.pool_size} is over pool_max_workers "
                f"({settings.pool_max_workers})"
            )
    if settings.default_pool and settings.default_pool not in names:
        raise ConfigurationError(
            f"default_pool {settings.default_pool!r} is not one of the configured pools: "
            + ", ".join(names)
        )
    return settings


def _check_observability(settings: Settings) -> None:
    if settings.log_level not in LOG_LEVELS:
        raise ConfigurationError(
            f"log_level must be one of {', '.join(LOG_LEVELS)}, got {settings.log_level!r}"
        )
    unknown = sorted(set(settings.log_categories) - set(CATEGORIES))
    if unknown:
        raise ConfigurationError(
            f"unknown log_categories {', '.join(unknown)}; known: {', '.join(CATEGORIES)}",
            {"unknown": unknown},
        )
    if not 0 <= settings.metrics_port <= 65535:
        raise ConfigurationError(
            f"metrics_port must be a TCP port (0 turns metrics off), got {settings.metrics_port}"
        )


def _as_dict(settings: Settings) -> dict[str, Any]:
    return {f: getattr(settings, f) for f in _SETTING_FIELDS}
