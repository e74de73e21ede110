"""Sessions: every call of a session reaches the worker that holds its state.

    python examples/sessions.py
"""

from __future__ import annotations

from _common import say, use_pool

import snakepit_tasks as sp


def main() -> None:
    for sid, colour in (("alice", "green"), ("bob", "blue")):
        first = sp.execute_in_session(sid, "remember", {"key": f"{sid}/colour", "value": colour})
        say(f"{sid}: remember colour={colour}", f"in worker {first['worker_id']}")
        for _ in range(3):  # the same worker, which still has it in memory
            again = sp.execute_in_session(sid, "recall", {"key": f"{sid}/colour"})
            assert again["worker_id"] == first["worker_id"] and again["value"] == colour
        say(f"{sid}: recall colour x3", f"{again['value']!r}, always from {again['worker_id']}")

    info = sp.sessions.get("alice")
    say("sessions.get('alice')", {k: info[k] for k in ("worker", "pool")} if info else None)
    pool = sp.default_app().snakepit_settings.default_pool_name
    say("sessions in the pool", sorted(s["session_id"] for s in sp.sessions.list_sessions(pool)))
    for sid in ("alice", "bob"):
        sp.sessions.delete(sid)
    say("after sessions.delete", sp.sessions.get("alice"))


if __name__ == "__main__":
    use_pool(pool_size=2)
    sp.run_as_script(main, exit_mode="stop")
