"""Payload encoding speed, standard library vs orjson: ``python -m bench.serialization``.

Times ``encode_args``, ``encode_result`` and ``decode`` of snakepit_tasks.serialization on a
few payloads with each JSON backend (orjson switched off for the ``json`` column) and prints
microseconds per call, best of several rounds. No Redis, no processes; about 20 seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import timeit
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from snakepit_tasks import serialization
from snakepit_tasks.serialization import codec


def payloads() -> dict[str, tuple[Any, bool]]:
    """name -> (value, whether it is a valid argument)."""
    rows = [
        {"id": i, "name": f"item-{i}", "score": i * 0.5, "tags": ["a", "b"], "ok": i % 2 == 0}
        for i in range(1000)
    ]
    cases: dict[str, tuple[Any, bool]] = {
        "small dict": ({"prompt": "hello", "n": 3, "temperature": 0.7, "stop": ["\n"]}, True),
        "1k dicts": ({"rows": rows}, True),
        "1k dicts, nulls": ({"rows": [dict(r, note=None) for r in rows]}, True),
        "1 MB string": ({"text": "x" * 1_000_000}, True),
        "1k datetimes": ({"at": [dt.datetime(2024, 1, 1) + dt.timedelta(i) for i in range(1000)]},
                         False),
    }
    try:
        import numpy
    except ImportError:
        return cases
    cases["numpy 100k floats"] = ({"a": numpy.linspace(0.0, 1.0, 100_000)}, False)
    return cases


@contextmanager
def backend(name: str) -> Iterator[None]:
    saved = codec.orjson
    if name == "json":
        codec.orjson = None  # type: ignore[assignment]
    try:
        yield
    finally:
        codec.orjson = saved


def best_us(fn: Callable[[], Any], budget_s: float) -> float:
    """Microseconds per call, best of 5 rounds of about ``budget_s / 5`` each."""
    timer = timeit.Timer(fn)
    number, elapsed = timer.autorange()
    number = max(1, int(number * (budget_s / 5) / max(elapsed, 1e-9)))
    return min(timer.repeat(repeat=5, number=number)) / number * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.25, help="seconds per measurement")
    args = parser.parse_args(argv)
    if codec.orjson is None:
        print("orjson is not installed: only the json column is measured")
    backends = ["json"] + (["orjson"] if codec.orjson is not None else [])
    header = f"{'payload':<18} {'operation':<14} {'bytes':>9}" + "".join(
        f" {name + ' us':>11}" for name in backends
    )
    if len(backends) == 2:
        header += f" {'speed-up':>9}"
    print(header)
    print("-" * len(header))
    for name, (value, is_argument) in payloads().items():
        data = serialization.encode_result(value)
        operations: dict[str, Callable[[], Any]] = {}
        if is_argument:
            operations["encode_args"] = functools.partial(serialization.encode_args, value)
        operations["encode_result"] = functools.partial(serialization.encode_result, value)
        operations["decode"] = functools.partial(serialization.decode, data)
        for operation, fn in operations.items():
            times = []
            for backend_name in backends:
                with backend(backend_name):
                    times.append(best_us(fn, args.budget))
            line = f"{name:<18} {operation:<14} {len(data):>9}" + "".join(
                f" {t:>11.1f}" for t in times
            )
            if len(times) == 2:
                line += f" {times[0] / times[1]:>8.2f}x"
            print(line)


if __name__ == "__main__":
    main()
