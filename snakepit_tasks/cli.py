"""The ``snakepit-tasks`` command: worker, demo, status, doctor, setup, gen, flower."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import re
import shutil
import sys
from pathlib import Path

from .config import load_settings
from .errors import SnakepitError


def _settings(ns: argparse.Namespace):  # type: ignore[no-untyped-def]
    if getattr(ns, "config", None):
        os.environ["SNAKEPIT_CONFIG"] = ns.config
    return load_settings()


def cmd_worker(ns: argparse.Namespace) -> int:
    """Start and supervise this host's nodes."""
    from .supervisor import Supervisor, node_specs

    logging.basicConfig(
        level=ns.loglevel.upper(), format="[%(asctime)s: %(levelname)s] %(message)s"
    )
    settings = _settings(ns)
    specs = node_specs(settings, ns.pool, name=ns.name)
    return Supervisor(settings, specs, ns.loglevel).run()


def cmd_demo(ns: argparse.Namespace) -> int:
    """Run the demo."""
    from .demo import run_demo

    return run_demo()


def cmd_status(ns: argparse.Namespace) -> int:
    """Print each pool's nodes, workers and counters; exit 1 if a pool has no live node."""
    from . import caller, connections, dead_letters, keys, pool_state
    from .app import configure

    settings = _settings(ns)
    app = configure(settings)
    r = connections.redis_client(settings.redis_url)
    pools = sorted({p.name for p in settings.pools} | pool_state.known_pools(r))
    if getattr(ns, "drop_dead_letters", False):
        for pool in pools:
            print(f"pool {pool}: dropped {dead_letters.drop(r, pool)} dead letter(s)")
        return 0
    down = 0
    for pool in pools:
        stats = caller.get_stats(pool, app=app)
        print(
            f"pool {pool}: nodes={stats['nodes']} workers={stats['workers']} "
            f"busy={stats['busy']} available={stats['available']} queued={stats['queued']} "
            f"requests={stats['requests']} errors={stats['errors']} "
            f"queue_timeouts={stats['queue_timeouts']} pool_saturated={stats['pool_saturated']} "
            f"circuit={stats['circuit']} healthy={stats['healthy']} "
            f"dead_letters={stats['dead_letters']}"
        )
        if getattr(ns, "dead_letters", False):
            for entry in dead_letters.list_entries(r, pool):
                print(f"  dead letter from {entry['queue']} (call {entry['call_id'] or '?'}, "
                      f"{entry['size']} bytes, node {entry['node']}): {entry['reason']}\n"
                      f"    {entry['preview']}")
        for dead, backlog in sorted(r.hgetall(keys.dead_backlog(pool)).items()):
            print(f"  dead node {connections.text(dead)}: {int(backlog)} message(s) taken over "
                  "by the janitor at its last sweep")
        for node in pool_state.live_nodes(r, pool):
            for w in node["workers"]:
                print(f"  {w['id']:<40} pid={w['pid']} state={w['state']} "
                      f"inflight={w['inflight']}/{w['capacity']} requests={w['requests']}")
        if pool in {p.name for p in settings.pools} and not stats["nodes"]:
            down += 1
    return 1 if down else 0


def cmd_doctor(ns: argparse.Namespace) -> int:
    """Check the installation and the configuration; exit 1 on any failure."""
    from .embedded_redis import find_redis_server
    from .node.adapter_check import check_adapter

    ok = True

    def report(passed: bool, what: str, detail: str = "") -> None:
        nonlocal ok
        ok = ok and passed
        print(f"[{'ok' if passed else 'FAIL'}] {what}" + (f": {detail}" if detail else ""))

    report(sys.version_info >= (3, 11), "python >= 3.11", sys.version.split()[0])
    for module in ("celery", "kombu", "redis", "grpc", "google.protobuf"):
        try:
            importlib.import_module(module)
            report(True, f"import {module}")
        except ImportError as exc:
            report(False, f"import {module}", str(exc))
    try:
        settings = _settings(ns)
        report(True, "configuration", f"{len(settings.pools)} pool(s)")
    except SnakepitError as exc:
        report(False, "configuration", str(exc))
        return 1
    try:
        import redis

        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2).ping()
        report(True, "redis reachable", settings.redis_url)
    except Exception as exc:
        binary = find_redis_server()
        report(False, "redis reachable", f"{settings.redis_url}: {exc}"
               + (f" (an embedded server is available: {binary})" if binary else ""))
    for pool in settings.pools:
        error = check_adapter(
            pool.adapter, adapter_env=pool.adapter_env, profile=pool.worker_profile
        )
        report(error is None, f"pool {pool.name}: adapter {pool.adapter} imports", error or "")
    from . import hardware

    report(True, "hardware", hardware.one_line())
    for pool in settings.pools:
        if pool.requires or pool.device:
            try:
                hardware.check_host(pool.name, pool.requires, pool.device)
                report(True, f"pool {pool.name}: this host has "
                       + ", ".join([*pool.requires, *([pool.device] if pool.device else [])]))
            except SnakepitError as exc:
                report(False, f"pool {pool.name}: host", str(exc))
    return 0 if ok else 1


def cmd_hardware(ns: argparse.Namespace) -> int:
    """Print this host's CPU, memory and accelerators (``--json``: detect() + capabilities())."""
    import json

    from . import hardware

    if ns.json:
        found = {**hardware.detect().as_dict(), "capabilities": hardware.capabilities()}
        print(json.dumps(found, indent=2))
    else:
        print(hardware.summary())
    return 0


def cmd_setup(ns: argparse.Namespace) -> int:
    """Check the generated gRPC stubs match proto/ and the package imports; print next steps."""
    from . import protogen

    if importlib.util.find_spec("grpc_tools") is not None and protogen.PROTO_DIR.exists():
        stale = protogen.check()
        if stale:
            protogen.generate(protogen.OUT_DIR)
            print("regenerated gRPC stubs:", ", ".join(stale))
        else:
            print("gRPC stubs are up to date")
    print("next: `snakepit-tasks doctor`, then `snakepit-tasks worker --pool NAME`")
    return 0


def cmd_gen(ns: argparse.Namespace) -> int:
    """Write a new adapter module from the template."""
    name = ns.name
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        print(f"error: {name!r} is not a valid Python module name", file=sys.stderr)
        return 2
    target = Path(ns.dir) / f"{name}.py"
    if target.exists():
        print(f"error: {target} already exists", file=sys.stderr)
        return 2
    import adapters.template as template

    class_name = "".join(part.capitalize() for part in name.split("_")) + "Adapter"
    text = Path(template.__file__).read_text().replace("TemplateAdapter", class_name)
    text = text.replace("my_package.my_module", name)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    print(f"wrote {target}; use it with adapter = \"{name}:{class_name}\"")
    return 0


def cmd_flower(ns: argparse.Namespace) -> int:
    """Run Flower against this configuration's broker."""
    if importlib.util.find_spec("flower") is None:
        print("error: Flower is not installed: pip install 'snakepit-tasks[flower]'",
              file=sys.stderr)
        return 2
    _settings(ns)
    celery = shutil.which("celery") or sys.executable
    argv = [celery] if celery != sys.executable else [sys.executable, "-m", "celery"]
    argv += ["-A", "snakepit_tasks.node.entry", "flower", *ns.flower_args]
    os.execv(argv[0], argv)
    return 0  # pragma: no cover


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``snakepit-tasks``."""
    parser = argparse.ArgumentParser(prog="snakepit-tasks", description=__doc__)
    parser.add_argument("--config", help="TOML settings file (default: SNAKEPIT_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="start and supervise this host's nodes")
    p.add_argument("--pool", action="append", help="pool to serve (repeatable; default: all)")
    p.add_argument("--name", help="node name (one pool only), e.g. default@host1")
    p.add_argument("--loglevel", "-l", default="info")
    p.set_defaults(fn=cmd_worker)

    sub.add_parser("demo", help="run the demo").set_defaults(fn=cmd_demo)
    st = sub.add_parser("status", help="show pools, nodes and workers")
    st.add_argument("--dead-letters", action="store_true",
                    help="also list the messages nodes refused (never run)")
    st.add_argument("--drop-dead-letters", action="store_true",
                    help="remove every pool's dead letters, then exit")
    st.set_defaults(fn=cmd_status)
    sub.add_parser("doctor", help="check installation and configuration").set_defaults(
        fn=cmd_doctor
    )
    hw = sub.add_parser("hardware", help="show this host's CPU, memory and GPUs")
    hw.add_argument("--json", action="store_true", help="print detect() and capabilities()")
    hw.set_defaults(fn=cmd_hardware)
    sub.add_parser("setup", help="check generated stubs and the installation").set_defaults(
        fn=cmd_setup
    )
    gen = sub.add_parser("gen", help="generate code")
    gen_sub = gen.add_subparsers(dest="what", required=True)
    ga = gen_sub.add_parser("adapter", help="a new adapter module from the template")
    ga.add_argument("name")
    ga.add_argument("--dir", default=".")
    ga.set_defaults(fn=cmd_gen)
    fl = sub.add_parser("flower", help="run Flower (needs the [flower] extra); options follow")
    fl.set_defaults(fn=cmd_flower, flower_args=[])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``snakepit-tasks`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    flower_args: list[str] = []
    if "flower" in args:  # everything after it belongs to Flower
        at = args.index("flower")
        args, flower_args = args[: at + 1], args[at + 1 :]
        if flower_args[:1] == ["--"]:
            flower_args = flower_args[1:]
    ns = build_parser().parse_args(args)
    if ns.command == "flower":
        ns.flower_args = flower_args
    try:
        return int(ns.fn(ns))
    except SnakepitError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
