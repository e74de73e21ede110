"""snakepit_tasks.lua: scripts loaded by name, one script including another."""

from __future__ import annotations

from snakepit_tasks import lua


def test_an_include_puts_the_other_script_in_front_as_a_function() -> None:
    text = lua.source("fast_send")
    head, _, rest = text.partition("end\n-- fast_send.lua")
    assert head.startswith("local function fast_admit(KEYS, ARGV)\n")
    assert lua.source("fast_admit") in head
    assert "fast_admit(KEYS, ARGV)" in rest


def test_includes_nest() -> None:
    text = lua.source("fast_admit")
    head, _, rest = text.partition("end\n-- fast_admit.lua")
    assert head.startswith("local function circuit_breaker(KEYS, ARGV)\n")
    assert lua.source("circuit_breaker") in head
    assert "circuit_breaker({KEYS[1], KEYS[2]}" in rest


def test_compact_drops_comment_lines_and_indentation_only() -> None:
    compact = lua.compact("fast_send")
    lines = compact.splitlines()
    assert not any(line.lstrip().startswith("--") or not line.strip() for line in lines)
    code = [line.strip() for line in lua.source("fast_send").splitlines()
            if line.strip() and not line.lstrip().startswith("--")]
    assert lines == code, "comment lines and indentation dropped, nothing else"
    assert len(compact) < 0.6 * len(lua.source("fast_send"))


def test_the_send_scripts_are_not_written_alone() -> None:
    """redis-py writes an argument over 6,000 bytes on its own: under that, a script goes out
    with its keys and arguments (see lua.compact)."""
    assert len(lua.compact("fast_send")) < 6000
    assert len(lua.compact("fast_send_session")) < 6000
