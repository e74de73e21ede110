"""Tests of the adapter in template.py: the module imports, a pool runs it, its tools answer.

``snakepit-tasks gen adapter NAME`` writes a copy of this file next to the new adapter. Run it
with ``python -m pytest test_template.py``. It needs a Redis: SNAKEPIT_REDIS_URL if set, else
one on 127.0.0.1:6379, else an embedded one (``pip install 'snakepit-tasks[embedded]'``). It
starts a node for its own pool and stops it (and an embedded Redis) at the end.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import snakepit_tasks as sp

HERE = Path(__file__).resolve().parent
MODULE = "adapters.template"
ADAPTER = f"{MODULE}:TemplateAdapter"
POOL = "test-template"


@pytest.fixture(scope="module")
def pool() -> Iterator[str]:
    """A pool of one worker running the adapter, for these tests only."""
    table = {"name": POOL, "adapter": ADAPTER, "pool_size": 1,
             "adapter_env": {"PYTHONPATH": str(HERE)}}  # the worker imports the module from here
    saved = os.environ.get("SNAKEPIT_POOLS")
    os.environ["SNAKEPIT_POOLS"] = json.dumps([table])  # read here and by the node started below
    sp.configure()  # this process's app, from the same settings
    try:
        sp.start_pools([POOL])
        yield POOL
    finally:
        sp.cleanup()
        if saved is None:
            os.environ.pop("SNAKEPIT_POOLS", None)
        else:
            os.environ["SNAKEPIT_POOLS"] = saved


def test_the_module_imports_and_declares_its_tools() -> None:
    sys.path.insert(0, str(HERE))
    module = importlib.import_module(MODULE)
    assert {"hello", "count"} <= set(module.TemplateAdapter.tools())


def test_a_worker_runs_hello(pool: str) -> None:
    assert sp.execute("hello", {"name": "test"}, pool=pool) == {"message": "hello, test"}


def test_count_streams_its_chunks_in_order(pool: str) -> None:
    assert [chunk["i"] for chunk in sp.stream("count", {"n": 3}, pool=pool)] == [1, 2, 3]
