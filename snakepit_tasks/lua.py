"""Lua scripts from ``broker/``, loaded by name and cached per client."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import redis

from . import resp

INCLUDE = "-- include: "


@functools.cache
def source(name: str) -> str:
    """The text of ``broker/<name>.lua``. A header line ``-- include: <other>`` puts the text
    of ``broker/<other>.lua`` in front of it as ``local function <other>(KEYS, ARGV)``, so one
    script can run another's logic in the same atomic step."""
    text = _read(name)
    included = [
        f"local function {other}(KEYS, ARGV)\n{source(other)}\nend\n"
        for other in (line[len(INCLUDE):].split()[0] for line in text.splitlines()
                      if line.startswith(INCLUDE))
    ]
    return "".join(included) + text


@functools.cache
def compact(name: str) -> str:
    """:func:`source` without its comment lines and indentation: what ``EVAL`` sends (Redis
    compiles a script once and finds it again by its SHA). Under 6,000 bytes, redis-py writes
    a script together with its arguments (and the commands behind it, while they fit), not
    in a write of its own."""
    return "\n".join(line.strip() for line in source(name).splitlines()
                     if line.strip() and not line.lstrip().startswith("--"))


def _read(name: str) -> str:
    try:
        return (resources.files("snakepit_tasks.broker") / f"{name}.lua").read_text()
    except ModuleNotFoundError:
        return (Path(__file__).resolve().parent.parent / "broker" / f"{name}.lua").read_text()


_registered: dict[tuple[int, str], Any] = {}


def script(r: redis.Redis, name: str) -> Any:
    """A callable ``script(keys=[...], args=[...])`` for ``broker/<name>.lua`` on ``r``."""
    key = (id(r), name)
    found = _registered.get(key)
    if found is None:
        found = _registered[key] = r.register_script(source(name))
    return found


def run(r: redis.Redis, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """Run ``broker/<name>.lua`` on ``r`` in one lean round trip (:mod:`.resp`): EVALSHA,
    and EVAL when Redis lost the script (a restart). Its reply; an error it raised is raised."""
    found = script(r, name)
    answer = resp.round_trip(r, resp.pack("EVALSHA", found.sha, len(keys), *keys, *args))[0]
    if isinstance(answer, redis.exceptions.NoScriptError):
        answer = resp.round_trip(r, resp.pack("EVAL", found.script, len(keys), *keys, *args))[0]
    if isinstance(answer, Exception):
        raise answer
    return answer
