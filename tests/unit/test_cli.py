"""snakepit_tasks.cli: the parser and the commands that need neither Redis nor a node."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from snakepit_tasks import cli
from snakepit_tasks.bridge.runtime import load_adapter


@pytest.fixture
def forget_module() -> Iterator[list[str]]:
    """Names appended here are dropped from sys.modules after the test."""
    names: list[str] = []
    yield names
    for name in names:
        sys.modules.pop(name, None)


def test_worker_with_repeated_pools() -> None:
    ns = cli.build_parser().parse_args(["worker", "--pool", "a", "--pool", "b"])
    assert ns.command == "worker"
    assert ns.pool == ["a", "b"]
    assert ns.name is None
    assert ns.loglevel is None  # info, without Celery's banner unless -l info or --banner
    assert ns.banner is False
    assert ns.fn is cli.cmd_worker


def test_worker_defaults_to_all_pools() -> None:
    ns = cli.build_parser().parse_args(["--config", "x.toml", "worker", "-l", "debug"])
    assert ns.pool is None
    assert ns.config == "x.toml"
    assert ns.loglevel == "debug"


def test_gen_adapter_arguments() -> None:
    ns = cli.build_parser().parse_args(["gen", "adapter", "foo"])
    assert (ns.command, ns.what, ns.name, ns.dir) == ("gen", "adapter", "foo", ".")
    assert ns.fn is cli.cmd_gen


@pytest.mark.parametrize(
    ("argv", "fn"),
    [
        (["demo"], "cmd_demo"),
        (["status"], "cmd_status"),
        (["doctor"], "cmd_doctor"),
        (["setup"], "cmd_setup"),
        (["flower"], "cmd_flower"),
    ],
)
def test_subcommands(argv: list[str], fn: str) -> None:
    ns = cli.build_parser().parse_args(argv)
    assert ns.fn is getattr(cli, fn)


def test_flower_passes_its_options_through(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(cli, "cmd_flower", lambda ns: seen.append(ns.flower_args) or 0)
    assert cli.main(["flower", "--port", "5555", "--basic-auth=u:p"]) == 0
    assert seen == [["--port", "5555", "--basic-auth=u:p"]]


@pytest.mark.parametrize("argv", [[], ["gen"], ["nonsense"], ["worker", "--bogus"]])
def test_bad_command_lines_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2


def test_gen_adapter_writes_a_loadable_module(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    forget_module: list[str],
) -> None:
    assert cli.main(["gen", "adapter", "my_thing", "--dir", str(tmp_path)]) == 0
    target = tmp_path / "my_thing.py"
    assert target.is_file()
    text = target.read_text()
    assert "class MyThingAdapter(BaseAdapter)" in text
    assert 'adapter = "my_thing:MyThingAdapter"' in text
    assert "TemplateAdapter" not in text
    assert "my_thing:MyThingAdapter" in capsys.readouterr().out
    monkeypatch.syspath_prepend(str(tmp_path))
    forget_module.append("my_thing")
    cls = load_adapter("my_thing:MyThingAdapter")
    assert cls.__name__ == "MyThingAdapter"
    assert {"hello", "count"} <= set(cls.tools())


def test_gen_adapter_creates_the_directory(tmp_path: Path) -> None:
    target_dir = tmp_path / "deep" / "er"
    assert cli.main(["gen", "adapter", "x", "--dir", str(target_dir)]) == 0
    assert (target_dir / "x.py").is_file()


def test_gen_adapter_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "taken.py").write_text("# mine\n")
    assert cli.main(["gen", "adapter", "taken", "--dir", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "taken.py").read_text() == "# mine\n"


@pytest.mark.parametrize("name", ["1bad", "my-thing", "a.b", ""])
def test_gen_adapter_rejects_bad_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    assert cli.main(["gen", "adapter", name, "--dir", str(tmp_path)]) == 2
    assert "not a valid Python module name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_configuration_error_exits_2_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # --config sets SNAKEPIT_CONFIG for the process; monkeypatch restores it afterwards.
    monkeypatch.setenv("SNAKEPIT_CONFIG", "")
    missing = tmp_path / "missing.toml"
    assert cli.main(["--config", str(missing), "status"]) == 2
    err = capsys.readouterr().err
    assert "ConfigurationError" in err
    assert "missing.toml" in err


def test_setup_reports_stubs_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("grpc_tools")
    assert cli.main(["setup"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_gen_adapter_writes_its_test_and_the_next_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["gen", "adapter", "my_thing", "--dir", str(tmp_path)]) == 0
    test = (tmp_path / "test_my_thing.py").read_text()
    assert 'MODULE = "my_thing"' in test and 'POOL = "test-my_thing"' in test
    assert "MyThingAdapter" in test and "template" not in test.lower()
    out = capsys.readouterr().out
    folder = tmp_path.resolve()
    assert f"wrote {folder / 'my_thing.py'}" in out
    assert f"wrote {folder / 'test_my_thing.py'}" in out
    assert f"PYTHONPATH={folder}" in out  # how to make it importable
    assert '[[pools]]\n       name = "my_thing"\n       adapter = "my_thing:MyThingAdapter"' in out
    assert f"python -m pytest {folder / 'test_my_thing.py'}" in out
    assert "snakepit-tasks worker --pool my_thing" in out


def test_gen_adapter_refuses_to_overwrite_a_test(tmp_path: Path) -> None:
    (tmp_path / "test_taken.py").write_text("# mine\n")
    assert cli.main(["gen", "adapter", "taken", "--dir", str(tmp_path)]) == 2
    assert not (tmp_path / "taken.py").exists()


@pytest.mark.parametrize(
    "argv",
    [["worker"], ["demo"], ["status"], ["doctor"], ["hardware"], ["setup"], ["gen"],
     ["gen", "adapter"]],
)
def test_every_command_explains_itself_and_its_exit_codes(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out and "  2    bad command line or configuration" in out
    assert "usage: snakepit-tasks" in out


def test_status_documents_the_redis_down_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["status", "--help"])
    out = capsys.readouterr().out
    assert f"  {cli.EXIT_UNAVAILABLE}   Redis could not be reached" in out
    assert "  1    a configured pool has no live node" in out


def test_config_may_follow_the_command() -> None:
    ns = cli.build_parser().parse_args(["status", "--config", "x.toml", "--json"])
    assert ns.config == "x.toml" and ns.json
    ns = cli.build_parser().parse_args(["--config", "y.toml", "status"])
    assert ns.config == "y.toml"


def test_worker_shows_celerys_banner_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    from snakepit_tasks import supervisor

    seen: list[tuple[str, bool]] = []

    class FakeSupervisor:
        def __init__(self, settings: object, specs: object, loglevel: str,
                     banner: bool = False) -> None:
            seen.append((loglevel, banner))

        def run(self) -> int:
            return 0

    monkeypatch.setattr(supervisor, "Supervisor", FakeSupervisor)
    for argv in (["worker"], ["worker", "-l", "warning"], ["worker", "-l", "info"],
                 ["worker", "-l", "warning", "--banner"]):
        assert cli.main(argv) == 0
    assert seen == [("info", False), ("warning", False), ("info", True), ("warning", True)]
