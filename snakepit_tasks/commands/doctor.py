"""``snakepit-tasks doctor``: check the installation, the configuration, Redis and the broker,
every pool's adapter and the data dir, then show the hardware. Each failed check prints a
one-line fix; the exit code is 1 when any check failed."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .. import connections
from ..config import Settings, config_source, load_settings
from ..errors import SnakepitError
from . import setup

MIN_PYTHON = (3, 11)
#: Modules every installation needs: (module, distribution).
REQUIRED = (
    ("celery", "celery"), ("kombu", "kombu"), ("redis", "redis"), ("grpc", "grpcio"),
    ("google.protobuf", "protobuf"), ("orjson", "orjson"),
)
REDIS_FIX = ("start Redis (`redis-server`, or `python -m snakepit_tasks.embedded_redis`) or "
             "point redis_url (SNAKEPIT_REDIS_URL) at a running one")


@dataclass(frozen=True)
class Check:
    """The outcome of one check: ``status`` is "ok", "FAIL" or "note" (notes never fail)."""

    status: str
    what: str
    detail: str = ""
    fix: str = ""

    def lines(self) -> list[str]:
        out = [f"[{self.status}]".ljust(7) + self.what + (f": {self.detail}" if self.detail
                                                          else "")]
        if self.fix:
            out.append(" " * 7 + f"fix: {self.fix}")
        return out


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def check_python() -> Check:
    version = sys.version.split()[0]
    if sys.version_info[:2] >= MIN_PYTHON:
        return Check("ok", "python >= 3.11", version)
    return Check("FAIL", "python >= 3.11", version, "use Python 3.11 or newer")


def check_packages() -> list[Check]:
    found = []
    for module, dist in REQUIRED:
        try:
            importlib.import_module(module)
            found.append(Check("ok", f"import {module}", f"{dist} {_version(dist)}"))
        except ImportError as exc:
            found.append(Check("FAIL", f"import {module}", str(exc),
                               f"pip install '{setup.DISTRIBUTION}' (it brings {dist})"))
    return found


def check_extras(settings: Settings) -> list[Check]:
    needs = setup.needed(settings)
    found = []
    for name, extra in setup.EXTRAS.items():
        if setup.installed(extra):
            found.append(Check("ok", f"extra {name}", "installed"))
        elif name in needs:
            found.append(Check("note", f"extra {name}", f"not installed; {needs[name]}",
                               f"snakepit-tasks setup --extra {name}"))
    return found


def check_stubs() -> Check | None:
    from .. import protogen

    if not protogen.PROTO_DIR.exists() or importlib.util.find_spec("grpc_tools") is None:
        return None
    stale = protogen.check()
    if stale:
        return Check("FAIL", "gRPC stubs match proto/", "stale: " + ", ".join(stale),
                     "snakepit-tasks setup")
    return Check("ok", "gRPC stubs match proto/")


def check_ping(what: str, url: str, ping: Callable[[], object], fix: str) -> Check:
    shown = connections.shown(url)
    try:
        ping()
    except Exception as exc:
        from ..embedded_redis import find_redis_server

        binary = find_redis_server()
        extra = f" (an embedded server is available: {binary})" if binary else ""
        return Check("FAIL", f"{what} reachable", f"{shown}: {exc}{extra}", fix)
    return Check("ok", f"{what} reachable", shown)


def _redis_ping(url: str) -> Callable[[], object]:
    import redis

    return lambda: redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2).ping()


def _broker_ping(url: str) -> Callable[[], object]:
    from kombu import Connection

    def ping() -> object:
        with Connection(url, connect_timeout=2) as conn:
            return conn.ensure_connection(max_retries=1, timeout=2)

    return ping


def check_connections(settings: Settings) -> list[Check]:
    found = [check_ping("redis", settings.redis_url, _redis_ping(settings.redis_url), REDIS_FIX)]
    if settings.broker == settings.redis_url:
        found.append(Check("ok", "broker", "the same Redis"))
    else:
        found.append(check_ping("broker", settings.broker, _broker_ping(settings.broker),
                                "start the broker or fix broker_url (SNAKEPIT_BROKER_URL)"))
    backend = settings.backend
    if backend not in (settings.redis_url, settings.broker) and backend.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        found.append(check_ping("result backend", backend, _redis_ping(backend),
                                "start it or fix result_backend (SNAKEPIT_RESULT_BACKEND)"))
    return found


def check_data_dir(settings: Settings) -> Check:
    from ..node.registry import default_data_dir

    path = settings.data_dir or str(default_data_dir())
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        writable = os.access(path, os.W_OK | os.X_OK)
    except OSError as exc:
        return Check("FAIL", "data dir writable", f"{path}: {exc.strerror or exc}",
                     "set data_dir (SNAKEPIT_DATA_DIR) to a writable directory")
    if not writable:
        return Check("FAIL", "data dir writable", f"{path}: not writable",
                     "set data_dir (SNAKEPIT_DATA_DIR) to a writable directory")
    return Check("ok", "data dir writable", path)


def check_adapters(settings: Settings) -> list[Check]:
    from ..node.adapter_check import check_adapter

    found = []
    for pool in settings.pools:
        error = check_adapter(pool.adapter, adapter_env=pool.adapter_env,
                              profile=pool.worker_profile)
        what = f"pool {pool.name}: adapter {pool.adapter} imports"
        if error is None:
            found.append(Check("ok", what))
            continue
        module = pool.adapter.split(":", 1)[0]
        fix = (f"make {module!r} importable where the worker runs: start it from the folder "
               f"that holds {module.split('.')[0]}, or set PYTHONPATH, or add adapter_env = "
               '{ PYTHONPATH = "/path/to/folder" } to the pool\'s table')
        if "ModuleNotFoundError" not in error:
            fix = f"fix the error in {module} (or the class name after ':')"
        found.append(Check("FAIL", what, error, fix))
    return found


def check_devices(settings: Settings) -> list[Check]:
    """Whether this host has what each pool requires (``requires``, ``device``)."""
    from .. import hardware

    found = []
    for pool in settings.pools:
        if not (pool.requires or pool.device):
            continue
        needs = ", ".join([*pool.requires, *([pool.device] if pool.device else [])])
        try:
            hardware.check_host(pool.name, pool.requires, pool.device)
            found.append(Check("ok", f"pool {pool.name}: this host has {needs}"))
        except SnakepitError as exc:
            found.append(Check("FAIL", f"pool {pool.name}: this host has {needs}", str(exc),
                               "run the pool on a host that has it, or change requires/device"))
    return found


def check_hardware() -> Check:
    """A one-line summary of this host's hardware (never fails)."""
    from .. import hardware

    try:
        return Check("ok", "hardware", hardware.one_line())
    except Exception as exc:  # detection never stops the doctor
        return Check("note", "hardware", f"detection failed: {exc!r}")


def hardware_lines() -> list[str]:
    from .. import hardware

    try:
        return hardware.summary().splitlines()
    except Exception as exc:  # detection never stops the doctor
        return [f"(hardware detection failed: {exc!r})"]


def run() -> int:
    """Run every check, print them and the hardware; 0 when none failed, else 1."""
    checks: list[Check] = [check_python(), *check_packages()]
    source = config_source()
    try:
        settings = load_settings()
    except SnakepitError as exc:
        checks.append(Check("FAIL", "configuration valid", f"{source.describe()}: {exc}",
                            "fix the setting named above"))
        settings = None
    if settings is not None:
        pools = ", ".join(p.name for p in settings.pools)
        checks.append(Check("ok", "configuration valid",
                            f"{source.describe()}; {len(settings.pools)} pool(s): {pools}"))
        stubs = check_stubs()
        checks.append(check_hardware())
        checks.extend([*check_extras(settings), *([stubs] if stubs else []),
                       *check_connections(settings), check_data_dir(settings),
                       *check_adapters(settings), *check_devices(settings)])
    for check in checks:
        print("\n".join(check.lines()), flush=True)
    print("\nhardware (snakepit_tasks.hardware):")
    for line in hardware_lines():
        print(f"  {line}")
    for line in hardware_lines():
        print(f"  {line}")
    failed = [c for c in checks if c.status == "FAIL"]
    print(f"\n{len(failed)} check(s) failed" if failed else "\nall checks passed")
    return 1 if failed else 0
