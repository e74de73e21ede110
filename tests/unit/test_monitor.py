"""Flower and beat command lines, and how calls look in task events (no broker contacted)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snakepit_tasks import beat, keys, monitor
from snakepit_tasks.app import create_app
from snakepit_tasks.call import Call
from snakepit_tasks.config import load_settings
from snakepit_tasks.errors import ConfigurationError
from snakepit_tasks.execute_task import ARGS_PREVIEW, EXECUTE, call_preview


def test_flower_refuses_to_run_open() -> None:
    with pytest.raises(ConfigurationError, match="--basic-auth=USER:PASSWORD"):
        monitor.flower_argv(["--port=5555"], {})


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--basic-auth=admin:secret"], {}),
        (["--basic_auth=admin:secret,ops:other"], {}),
        ([], {"FLOWER_BASIC_AUTH": "admin:secret"}),
        (["--auth=.*@example\\.com", "--auth_provider=flower.views.auth.GithubLoginHandler"], {}),
    ],
)
def test_flower_starts_with_an_auth_option(args: list[str], env: dict[str, str]) -> None:
    argv = monitor.flower_argv(args, env)
    assert argv[-len(args) - 1 :] == ["flower", *args] if args else argv[-1] == "flower"
    assert argv[argv.index("-A") + 1] == "snakepit_tasks.node.entry"


def test_flower_unsafe_no_auth_is_ours_and_not_passed_on() -> None:
    argv = monitor.flower_argv(["--unsafe-no-auth", "--port=1"], {})
    assert "--unsafe-no-auth" not in argv and argv[-1] == "--port=1"


@pytest.mark.parametrize("value", ["admin", "admin:", ":secret", "admin:secret,ops"])
def test_flower_basic_auth_needs_user_and_password(value: str) -> None:
    with pytest.raises(ConfigurationError, match="USER:PASSWORD"):
        monitor.flower_argv([f"--basic-auth={value}"], {})


def test_beat_command_uses_redbeat_and_the_schedule_module(tmp_path: Path) -> None:
    schedule = tmp_path / "nightly.py"
    schedule.write_text("beat_schedule = {}\n")
    argv, path = beat.beat_argv(str(schedule), ["--max-interval=2"])
    assert path == str(tmp_path)
    assert argv[argv.index("--config") + 1] == "nightly"
    assert argv[argv.index("-S") + 1] == beat.SCHEDULER
    assert argv.index("--config") < argv.index("beat") < argv.index("-S")
    assert argv[-1] == "--max-interval=2"
    argv, path = beat.beat_argv("my_app.schedule", ["-S", "other.Scheduler", "-l", "debug"])
    assert path is None and argv.count("-S") == 1 and argv.count("-l") == 1


def test_beat_schedule_must_exist() -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        beat.beat_argv("/nowhere/schedule.py", [])
    with pytest.raises(ConfigurationError, match="neither a module"):
        beat.beat_argv("rm -rf", [])


def test_app_has_redbeat_defaults() -> None:
    app = create_app(load_settings(redis_url="redis://127.0.0.1:1/3"), main="unit-test")
    try:
        assert app.conf.redbeat_key_prefix == keys.beat_prefix()
        assert app.conf.redbeat_redis_url == "redis://127.0.0.1:1/3"
        assert app.conf.redbeat_lock_timeout == beat.LOCK_TIMEOUT
        assert app.conf.beat_max_loop_interval == beat.MAX_LOOP_INTERVAL
    finally:
        app.close()


def test_calls_are_named_after_their_tool_in_events() -> None:
    app = create_app(load_settings(redis_url="redis://127.0.0.1:1/0"), main="unit-test")
    try:
        task = app.tasks[EXECUTE]
        assert task.shadow_name((), {"command": "predict", "args": {}}, {}) == "predict"
        assert task.shadow_name((), {}, {}) is None
    finally:
        app.close()


def test_argument_preview_is_short_and_redacted() -> None:
    call = Call(command="login", args={"password": "hunter2", "blob": "x" * 5000}, pool="p",
                deadline=1e9, enqueued_at=1.0, reply=True)
    text = call_preview(call)
    assert "hunter2" not in text and "<REDACTED>" in text
    assert len(text) <= 1100 and "'pool': 'p'" in text
    assert "deadline" not in text and "reply" not in text


_TEXT = st.sampled_from(["", "a", "plain text", 'say "hi"', "it's", "back\\slash", "ünï",
                         "tab\there", "x" * 64, "x" * 65, "password"])
_VALUE = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _TEXT)


@settings(max_examples=300, deadline=None)
@given(args=st.one_of(st.none(), st.dictionaries(_TEXT, _VALUE, max_size=6)),
       session_id=st.one_of(st.none(), _TEXT.filter(bool)), timeout=st.sampled_from([None, 2.5]))
def test_argument_preview_fast_path_writes_what_saferepr_writes(
    args: Any, session_id: str | None, timeout: float | None
) -> None:
    from celery.utils.saferepr import saferepr

    from snakepit_tasks.serialization.redact import redact

    call = Call(command="t", args=args, pool="p", session_id=session_id, timeout=timeout,
                deadline=1e9)
    shown: dict[str, Any] = {"pool": "p"}
    if session_id:
        shown["session_id"] = session_id
    if timeout:
        shown["timeout"] = timeout
    shown["args"] = args
    assert call_preview(call) == redact(saferepr(shown, ARGS_PREVIEW))


def test_cli_passes_beat_options_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from snakepit_tasks import cli

    seen: list[list[str]] = []
    monkeypatch.setattr(cli, "cmd_beat", lambda ns: seen.append(ns.beat_args) or 0)
    assert cli.main(["beat", "--schedule", "nightly.py", "--max-interval=2"]) == 0
    assert seen == [["--schedule", "nightly.py", "--max-interval=2"]]
