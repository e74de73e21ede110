"""Run a node under cProfile, every thread: ``python -m bench.node_profile OUT -m celery ...``.

Each thread gets its own profiler (``threading.setprofile`` hands the thread's first event
to a hook that starts one); at exit (a node ends with SIGTERM's warm shutdown) all of them
are merged into one ``pstats`` file at OUT. Times are wall-clock per thread: a thread
blocked in Redis or gRPC shows that time in the blocking call. Bench-only; the node's own
code is not changed. ``bench.run_all --profile`` starts a node this way.
"""

from __future__ import annotations

import atexit
import contextlib
import cProfile
import pstats
import runpy
import sys
import threading
from typing import Any

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def _start_thread_profile(frame: Any, event: str, arg: Any) -> None:
    sys.setprofile(None)
    profile = cProfile.Profile()
    with _lock:
        _profiles.append(profile)
    profile.enable()


def _dump(path: str) -> None:
    stats: pstats.Stats | None = None
    with _lock:
        profiles = list(_profiles)
    for profile in profiles:
        with contextlib.suppress(Exception):
            profile.disable()
        try:
            profile.create_stats()
            if stats is None:
                stats = pstats.Stats(profile)
            else:
                stats.add(profile)
        except Exception as exc:  # a profile still being written by its thread
            print(f"bench.node_profile: skipped one thread's profile: {exc!r}", file=sys.stderr)
    if stats is not None:
        stats.dump_stats(path)


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        raise SystemExit("usage: python -m bench.node_profile OUT.pstats -m MODULE [ARGS...]")
    out, module, rest = sys.argv[1], sys.argv[3], sys.argv[4:]
    threading.setprofile(_start_thread_profile)
    main_profile = cProfile.Profile()
    _profiles.append(main_profile)
    atexit.register(_dump, out)
    sys.argv = [module, *rest]
    main_profile.enable()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
