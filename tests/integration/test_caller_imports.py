"""A caller process loads no node code: no snakepit_tasks.node, no grpc, no sqlite3."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from helpers import REPO, subprocess_env

pytestmark = pytest.mark.timeout(120)

CALLER = textwrap.dedent("""
    import json, sys
    import snakepit_tasks as sp
    sp.configure()
    result = sp.execute_async("add", {"a": 2, "b": 3})
    value = result.get(timeout=60)
    loaded = sorted(m for m in sys.modules
                    if m.startswith(("snakepit_tasks.node", "grpc", "sqlite3", "_sqlite3")))
    print(json.dumps({"value": value, "loaded": loaded}))
""")


def test_send_and_wait_loads_no_node_code(node, redis_url):
    n = node()
    done = subprocess.run(
        [sys.executable, "-c", CALLER], capture_output=True, text=True, timeout=90, cwd=REPO,
        env=subprocess_env(redis_url, [n.table]), check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    assert report == {"value": 5, "loaded": []}
