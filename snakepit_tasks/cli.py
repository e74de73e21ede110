"""The ``snakepit-tasks`` command: worker, demo, status, doctor, hardware, setup, gen, flower, beat.

Exit codes (every sub-command): 0 success; 1 the command ran and found a problem (a check
failed, a configured pool has no live node); 2 a bad command line or configuration; 69
(EX_UNAVAILABLE) Redis or the broker could not be reached; 78 (EX_CONFIG, ``worker``) no node
can start because its adapter cannot be imported; 130 interrupted (Ctrl+C).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import textwrap

from .config import load_settings
from .errors import RedisUnavailable, SnakepitError
from .processes import EXIT_ADAPTER_UNLOADABLE

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69
#: What every sub-command's exit codes mean besides its own (see each ``--help``).
COMMON_CODES = {
    EXIT_USAGE: "bad command line or configuration",
    130: "interrupted (Ctrl+C)",
}
UNAVAILABLE = "Redis could not be reached (one line says which URL)"


def exit_codes(codes: dict[int, str]) -> str:
    """The "exit codes:" section of a ``--help``."""
    merged = {**codes, **{k: v for k, v in COMMON_CODES.items() if k not in codes}}
    return "exit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in
                                        sorted(merged.items()))


def _settings(ns: argparse.Namespace):  # type: ignore[no-untyped-def]
    if getattr(ns, "config", None):
        os.environ["SNAKEPIT_CONFIG"] = ns.config
    return load_settings()


def cmd_worker(ns: argparse.Namespace) -> int:
    """Start and supervise this host's nodes."""
    from .supervisor import Supervisor, node_specs

    level = ns.loglevel or "info"
    logging.basicConfig(level=level.upper(), format="[%(asctime)s: %(levelname)s] %(message)s")
    # Celery's banner (and its superuser warning) only when asked: --banner or -l info/debug.
    banner = ns.banner or (ns.loglevel is not None and level.lower() in ("debug", "info"))
    settings = _settings(ns)
    specs = node_specs(settings, ns.pool, name=ns.name)
    return Supervisor(settings, specs, level, banner=banner).run()


def cmd_demo(ns: argparse.Namespace) -> int:
    """Run the demo."""
    from .demo import run_demo

    return run_demo()


def cmd_status(ns: argparse.Namespace) -> int:
    """Print each pool's nodes, workers, queues and counters; exit 1 if a configured pool has
    no live node."""
    from .commands import status

    settings = _settings(ns)
    if ns.drop_dead_letters:
        for pool, n in status.drop_dead_letters(settings):
            print(f"pool {pool}: dropped {n} dead letter(s)")
        return EXIT_OK
    report = status.collect(settings, with_dead_letters=ns.dead_letters)
    print(status.as_json(report) if ns.json else status.as_text(report))
    return EXIT_OK if report["ok"] else EXIT_PROBLEM


def cmd_doctor(ns: argparse.Namespace) -> int:
    """Check the installation, the configuration, Redis, every adapter; exit 1 on a failure."""
    from .commands import doctor

    if getattr(ns, "config", None):
        os.environ["SNAKEPIT_CONFIG"] = ns.config
    return doctor.run()


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
    """Install the extras the configuration needs, regenerate stale gRPC stubs."""
    from .commands import setup

    return setup.run(_settings(ns), ns.extra or [], dry_run=ns.dry_run)


def cmd_gen(ns: argparse.Namespace) -> int:
    """Write a new adapter module and its test from the templates."""
    from .commands import gen

    return gen.write(ns.name, ns.dir)


def cmd_flower(ns: argparse.Namespace) -> int:
    """Run Flower against this configuration's broker (never without auth, unless told)."""
    from . import monitor

    if importlib.util.find_spec("flower") is None:
        print("error: Flower is not installed: pip install 'snakepit-tasks[flower]'",
              file=sys.stderr)
        return 2
    _settings(ns)
    argv = monitor.flower_argv(ns.flower_args, os.environ)
    os.execv(argv[0], argv)
    return 0  # pragma: no cover


def cmd_beat(ns: argparse.Namespace) -> int:
    """Run Celery beat with the Redis-held schedule and lock (one active beat)."""
    from . import beat

    opts = argparse.ArgumentParser(
        prog="snakepit-tasks beat",
        description="Celery beat for snakepit calls; one beat is active however many run. "
        "Other options go to `celery beat`.",
    )
    opts.add_argument("--schedule", help="beat schedule: a module name or a .py file "
                      "(a Celery config module with beat_schedule)")
    known, rest = opts.parse_known_args(ns.beat_args)
    _settings(ns)
    argv, path = beat.beat_argv(known.schedule, rest)
    if path:
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (path, os.environ.get("PYTHONPATH", "")) if p
        )
    os.execv(argv[0], argv)
    return 0  # pragma: no cover


def _sub(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    description: str,
    codes: dict[int, str],
) -> argparse.ArgumentParser:
    """A sub-command whose ``--help`` explains it and lists its exit codes."""
    p = sub.add_parser(
        name, help=summary, description=textwrap.fill(description, 90),
        epilog=exit_codes(codes), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Also accepted after the sub-command; SUPPRESS keeps a --config given before it.
    p.add_argument("--config", default=argparse.SUPPRESS, help="TOML settings file")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``snakepit-tasks``."""
    parser = argparse.ArgumentParser(
        prog="snakepit-tasks",
        description="A process pooler and session manager for Python adapters, on Celery and "
        "Redis.",
        epilog=exit_codes({0: "success", 1: "the command ran and found a problem",
                           EXIT_UNAVAILABLE: f"status: {UNAVAILABLE}",
                           EXIT_ADAPTER_UNLOADABLE: "worker: no node can start (its adapter "
                           "cannot be imported)"})
        + "\n\n`snakepit-tasks COMMAND --help` says what COMMAND does and its exit codes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="TOML settings file (default: SNAKEPIT_CONFIG, else "
                        "[tool.snakepit] in ./pyproject.toml, else defaults)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _sub(sub, "worker", "start and supervise this host's nodes",
             "Start one node (a Celery worker process) per configured pool, or per --pool, "
             "and keep them running: a node that dies is started again with backoff; one "
             "whose adapter cannot be imported is not. SIGINT/SIGTERM stop them all.",
             {0: "stopped by SIGINT/SIGTERM", EXIT_ADAPTER_UNLOADABLE: "no node can start: "
              "its adapter cannot be imported (nothing is retried)"})
    p.add_argument("--pool", action="append", help="pool to serve (repeatable; default: all)")
    p.add_argument("--name", help="node name (one pool only), e.g. default@host1")
    p.add_argument("--loglevel", "-l", default=None,
                   help="log level (default info; -l info or debug also shows Celery's banner)")
    p.add_argument("--banner", action="store_true",
                   help="show Celery's start-up banner and warnings at any log level")
    p.set_defaults(fn=cmd_worker)

    _sub(sub, "demo", "run the demo",
         "Start a pool of two showcase workers (on an embedded Redis unless "
         "SNAKEPIT_REDIS_URL is set), make calls, a session and a stream, then stop "
         "everything it started.",
         {0: "the demo ran", 1: "a step failed (the message says which)"},
         ).set_defaults(fn=cmd_demo)

    st = _sub(sub, "status", "show pools, nodes, workers, queues and counters",
              "Show every configured or known pool: its nodes (lease age), workers (busy, "
              "idle, tainted, calls served), queues (also those of dead nodes), counters, "
              "circuit breaker, sessions and dead letters, and which configuration was read. "
              "Exit 1 when a configured pool has no live node.",
              {0: "every configured pool has a live node",
               1: "a configured pool has no live node", EXIT_UNAVAILABLE: UNAVAILABLE})
    st.add_argument("--json", action="store_true", help="print the report as JSON")
    st.add_argument("--dead-letters", action="store_true",
                    help="also list the messages nodes refused (never run)")
    st.add_argument("--drop-dead-letters", action="store_true",
                    help="remove every pool's dead letters, then exit")
    st.set_defaults(fn=cmd_status)

    _sub(sub, "doctor", "check installation, configuration, Redis and adapters",
         "Check Python, the packages, the configuration (and which file was read), the "
         "optional extras it needs, the gRPC stubs, Redis and the broker, the data dir and "
         "every pool's adapter (imported as a worker would); show the hardware. Each "
         "failure comes with a one-line fix.",
         {0: "every check passed", 1: "a check failed (each comes with a fix)"},
         ).set_defaults(fn=cmd_doctor)

    hw = _sub(sub, "hardware", "show this host's CPU, memory and GPUs",
              "Show what snakepit_tasks.hardware detects on this host.", {0: "shown"})
    hw.add_argument("--json", action="store_true", help="print detect() and capabilities()")
    hw.set_defaults(fn=cmd_hardware)

    su = _sub(sub, "setup", "install the extras the configuration needs; regenerate stubs",
              "Install the optional extras this configuration or host needs (flower when "
              "task_events is on, gpu with an NVIDIA driver, otel with "
              "OTEL_EXPORTER_OTLP_ENDPOINT) and those named with --extra, with pip into this "
              "environment; extras this version does not have yet are listed as planned. "
              "Then regenerate the gRPC stubs if proto/ changed.",
              {0: "done (or nothing to do)", 1: "pip failed",
               2: "bad command line or configuration, or an unknown extra"})
    su.add_argument("--extra", action="append", metavar="NAME",
                    help="an extra to install (repeatable): embedded, flower, gpu, otel, "
                    "arrow, dev")
    su.add_argument("--dry-run", action="store_true",
                    help="print what would be installed; change nothing")
    su.set_defaults(fn=cmd_setup)

    gen = _sub(sub, "gen", "generate code", "Generate code from the templates.", {})
    gen_sub = gen.add_subparsers(dest="what", required=True)
    ga = _sub(gen_sub, "adapter", "a new adapter module and its test",
              "Write NAME.py (an adapter class with two tools) and test_NAME.py (imports "
              "it, starts a pool with it, calls its tools) into --dir, and print the next "
              "steps: how to make it importable, the configuration lines, how to run it.",
              {0: "written", 2: "bad command line or configuration, a name that is not a "
               "Python module name, or a file that exists already"})
    ga.add_argument("name", help="the module name (a Python identifier)")
    ga.add_argument("--dir", default=".", help="where to write the files (default: here)")
    ga.set_defaults(fn=cmd_gen)
    fl = sub.add_parser("flower", help="run Flower (needs the [flower] extra); options follow")
    fl.set_defaults(fn=cmd_flower, flower_args=[])
    bt = sub.add_parser("beat", help="run Celery beat (needs the [beat] extra): --schedule "
                        "MODULE_OR_FILE; other options follow")
    bt.set_defaults(fn=cmd_beat, beat_args=[])
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
    beat_args: list[str] = []
    if "beat" in args and "flower" not in args:  # everything after it belongs to beat
        at = args.index("beat")
        args, beat_args = args[: at + 1], [a for a in args[at + 1 :] if a != "--"]
    ns = build_parser().parse_args(args)
    if ns.command == "flower":
        ns.flower_args = flower_args
    if ns.command == "beat":
        ns.beat_args = beat_args
    try:
        return int(ns.fn(ns))
    except RedisUnavailable as exc:
        print(f"error: RedisUnavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except SnakepitError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
