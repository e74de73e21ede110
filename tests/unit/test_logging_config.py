"""Logging: silent by default, log_level and log_categories, secrets redacted in every line
and error message, runtime output forwarded with the worker id."""

from __future__ import annotations

import ast
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from snakepit_tasks import config, connections
from snakepit_tasks.bridge import logs as runtime_logs
from snakepit_tasks.bridge.runtime import _error
from snakepit_tasks.errors import ConfigurationError, RedisUnavailable
from snakepit_tasks.node import output
from snakepit_tasks.replies import encode_outcome
from snakepit_tasks.telemetry import logs

PACKAGE = Path(__file__).resolve().parents[2] / "snakepit_tasks"
SECRET_URL = "redis://user:hunter2@db.example:6379/0"


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def capture() -> Iterator[Capture]:
    handler = Capture()
    root = logging.getLogger(logs.ROOT)
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    logs.configure()  # back to the default


def test_silent_by_default(capture: Capture) -> None:
    logs.configure()
    for name in logs.LOGGERS:
        logging.getLogger(name).warning("a warning")
        logging.getLogger(name).error("an error")
    assert capture.lines == ["an error"] * len(logs.LOGGERS)


@pytest.mark.parametrize(("level", "shown"), [
    ("none", []), ("error", ["E"]), ("warning", ["W", "E"]), ("info", ["I", "W", "E"]),
    ("debug", ["D", "I", "W", "E"]),
])
def test_levels(capture: Capture, level: str, shown: list[str]) -> None:
    logs.configure(level)
    log = logging.getLogger("snakepit_tasks.janitor")
    log.debug("D")
    log.info("I")
    log.warning("W")
    log.error("E")
    assert capture.lines == shown


def test_categories_limit_the_level(capture: Capture) -> None:
    logs.configure("debug", ["grpc", "session"])
    logging.getLogger("snakepit_tasks.grpc").debug("grpc debug")
    logging.getLogger("snakepit_tasks.node").info("pool info")  # category pool: errors only
    logging.getLogger("snakepit_tasks.node").error("pool error")
    assert capture.lines == ["grpc debug", "pool error"]


def test_every_logger_of_the_package_belongs_to_a_category() -> None:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name == "logs.py" and path.parent.name == "telemetry":
            continue  # the module that configures them
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "getLogger" and node.args):
                arg = node.args[0]
                assert isinstance(arg, ast.Constant), f"{path}: getLogger of a non-literal"
                names.add(arg.value)
    assert names <= set(logs.LOGGERS), sorted(names - set(logs.LOGGERS))


def test_settings_validate_and_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="log_level must be one of"):
        config.load_settings(log_level="loud")
    with pytest.raises(ConfigurationError, match="unknown log_categories nope"):
        config.load_settings(log_categories=["pool", "nope"])
    monkeypatch.setenv("SNAKEPIT_LOG_CATEGORIES", "pool, grpc")
    monkeypatch.setenv("SNAKEPIT_TELEMETRY_HANDLERS", "a.b:c,d:e")
    settings = config.load_settings()
    assert settings.log_level == "error"
    assert settings.log_categories == ("pool", "grpc")
    assert settings.telemetry_handlers == ("a.b:c", "d:e")
    assert settings.metrics_port == 0 and not settings.otel_enabled


def test_secrets_are_redacted_in_log_lines_and_tracebacks(capture: Capture) -> None:
    logs.configure("info")
    capture.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("snakepit_tasks.node")
    log.info("connecting to %s with Authorization: Bearer abc.def", SECRET_URL)
    try:
        raise ValueError("api key sk-" + "a" * 24)
    except ValueError:
        log.error("failed", exc_info=True)
    text = "\n".join(capture.lines)
    assert "hunter2" not in text and "abc.def" not in text and "sk-aaaa" not in text
    assert "redis://user:<REDACTED>@db.example" in text
    assert "ValueError: api key <REDACTED>" in text


def test_secrets_are_redacted_in_error_messages() -> None:
    info = _error("adapter", ConnectionError(f"cannot reach {SECRET_URL}"))
    assert "hunter2" not in info.message and "hunter2" not in info.traceback
    body = encode_outcome(error=RedisUnavailable(f"down: {SECRET_URL}"))
    assert b"hunter2" not in body
    with pytest.raises(RedisUnavailable) as caught, connections.redis_errors_as_snakepit(
        f"calling {SECRET_URL}"
    ):
        raise redis.ConnectionError(f"Error connecting to {SECRET_URL}")
    assert "hunter2" not in str(caught.value) and "hunter2" not in str(caught.value.details)


def test_runtime_log_lines_round_trip() -> None:
    record = logging.LogRecord("adapter.x", logging.WARNING, __file__, 1, "two\nlines", None,
                               None)
    line = runtime_logs.LineFormatter("%(message)s").format(record)
    assert "\n" not in line
    assert runtime_logs.parse(line) == (logging.WARNING, "adapter.x", "two\nlines")
    assert runtime_logs.parse("a plain print") is None
    assert runtime_logs.parse(runtime_logs.MARK + "garbage") is None


def test_runtime_output_goes_to_the_node_log_with_the_worker_id(capture: Capture) -> None:
    logs.configure("info")
    capture.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    record = logging.LogRecord("tool", logging.ERROR, __file__, 1, "boom at %s", (SECRET_URL,),
                               None)
    marked = runtime_logs.LineFormatter("%(message)s").format(record)
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "wb") as w:
        w.write(f"hello from print\n{marked}\n\n".encode())
    thread = output.forward(os.fdopen(read_fd, "rb"), "node@h/0", "stdout")
    thread.join(5)
    assert capture.lines == [
        "INFO snakepit_tasks.adapter [node@h/0] stdout: hello from print",
        "ERROR snakepit_tasks.adapter [node@h/0] tool: boom at "
        "redis://user:<REDACTED>@db.example:6379/0",
    ]
    assert not thread.is_alive() and threading.active_count() >= 1
