"""Lua scripts from ``broker/``, loaded by name and cached per client."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any

import redis


@functools.cache
def source(name: str) -> str:
    """The text of ``broker/<name>.lua``."""
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
