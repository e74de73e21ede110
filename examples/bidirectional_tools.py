"""Bidirectional tools: an adapter calls back into this process (the "host side").

This script registers ``calculate_hash`` for a session; the showcase tool ``hash_via_host``
calls it from inside its worker process (adapter → node → Redis → this process → back).

    python examples/bidirectional_tools.py
"""

from __future__ import annotations

import hashlib
import os

from _common import say, use_pool

import snakepit_tasks as sp


def main() -> None:
    session = f"bridge-demo-{os.getpid()}"

    @sp.host_tool(session, name="calculate_hash", description="SHA-256 of a text")
    def calculate_hash(data: str) -> str:
        return hashlib.sha256(data.encode()).hexdigest()

    say("host tools of the session", [t.name for t in sp.list_host_tools(session)])
    answer = sp.execute_in_session(session, "hash_via_host", {"data": "hello"})
    expected = hashlib.sha256(b"hello").hexdigest()
    say("hash_via_host('hello') computed in this process", answer["hash"] == expected)
    say("  ... called from worker", answer["worker_id"])
    sp.unregister_host_tool(session, "calculate_hash")
    try:
        sp.execute_in_session(session, "hash_via_host", {"data": "again"})
    except sp.errors.AdapterError as exc:
        say("after unregister_host_tool, the adapter's call raised", type(exc).__name__)
    sp.sessions.delete(session)


if __name__ == "__main__":
    use_pool()
    sp.run_as_script(main, exit_mode="stop")
