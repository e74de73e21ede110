"""Basic calls: ping, echo, add, errors, a Celery AsyncResult and the web-app idiom .delay.

    python examples/basic.py
"""

from __future__ import annotations

from _common import say, use_pool

import snakepit_tasks as sp


def main() -> None:
    pong = sp.execute("ping")
    say("execute('ping')", f"{pong['status']} from {pong['worker_id']} (pid {pong['pid']})")
    say("execute('echo', {'hello': 'world'})", sp.execute("echo", {"hello": "world"}))
    say("execute('add', {'a': 2, 'b': 40})", sp.execute("add", {"a": 2, "b": 40}))
    try:
        sp.execute("fail", {"message": "something broke"})
    except sp.errors.AdapterError as exc:
        say("execute('fail') raised AdapterError", exc)
    try:
        sp.execute("no_such_tool")
    except sp.errors.ToolNotFound as exc:
        say("execute('no_such_tool') raised ToolNotFound", f"{len(exc.details['available'])} "
            "tools available")
    result = sp.execute_async("sleep", {"seconds": 0.2})
    say("execute_async('sleep')", f"task {result.id}")
    say("  ... get_result(id).get()", sp.get_result(result.id).get(timeout=30)["slept"])

    from snakepit_tasks.tasks import execute

    say("execute.delay('add', {'a': 1, 'b': 2}).get()",
        execute.delay("add", {"a": 1, "b": 2}).get(timeout=30))


if __name__ == "__main__":
    use_pool()
    sp.run_as_script(main, exit_mode="stop")
