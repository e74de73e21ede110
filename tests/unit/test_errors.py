"""snakepit_tasks.errors: one hierarchy, and errors that cross pickle and Celery's backend."""

from __future__ import annotations

import pickle

import pytest
from celery import Celery

from snakepit_tasks import errors
from snakepit_tasks.errors import (
    ERROR_CLASSES,
    AdapterError,
    SnakepitError,
    ToolNotFound,
)
from snakepit_tasks.node.worker import WorkerStartError

DESIGN_NAMES = {
    "SnakepitError",
    "PoolNotFound",
    "ToolNotFound",
    "AdapterError",
    "WorkerBusy",
    "SessionWorkerUnavailable",
    "WorkerCrashed",
    "CircuitOpen",
    "QueueFull",
    "QueueTimeout",
    "ExecutionTimeout",
    "SerializationError",
    "ConfigurationError",
    "NoWorkersAvailable",
}

ALL_CLASSES = sorted(ERROR_CLASSES.values(), key=lambda c: c.__name__)


def module_error_classes() -> set[type]:
    return {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    }


def test_registry_lists_every_class_of_the_module() -> None:
    assert set(ERROR_CLASSES.values()) == module_error_classes()
    assert set(ERROR_CLASSES) >= DESIGN_NAMES
    for name, cls in ERROR_CLASSES.items():
        assert cls.__name__ == name
        assert getattr(errors, name) is cls


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_every_class_subclasses_snakepit_error(cls: type[SnakepitError]) -> None:
    assert issubclass(cls, SnakepitError)
    assert issubclass(cls, Exception)


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_message_and_details(cls: type[SnakepitError]) -> None:
    exc = cls("something went wrong", {"k": 1})
    assert str(exc) == "something went wrong"
    assert exc.message == "something went wrong"
    assert exc.details == {"k": 1}
    assert exc.args == ("something went wrong", {"k": 1})
    bare = cls()
    assert bare.message == "" and bare.details == {}


def test_details_are_copied() -> None:
    details = {"a": 1}
    exc = SnakepitError("m", details)
    details["a"] = 2
    assert exc.details == {"a": 1}


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_pickle_round_trip(cls: type[SnakepitError]) -> None:
    exc = cls("boom", {"pool": "p", "n": 3, "nested": {"x": [1, 2]}})
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls
    assert back.message == "boom"
    assert back.details == {"pool": "p", "n": 3, "nested": {"x": [1, 2]}}
    assert str(back) == "boom"


def test_subclass_defined_elsewhere_pickles() -> None:
    exc = WorkerStartError("worker w/0 failed", {"worker_id": "w/0"})
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is WorkerStartError
    assert back.details == {"worker_id": "w/0"}


def test_adapter_error_properties() -> None:
    exc = AdapterError("bad", {"type": "ValueError", "traceback": "Traceback ..."})
    assert exc.type == "ValueError"
    assert exc.traceback == "Traceback ..."
    assert AdapterError("bad").type == ""
    assert AdapterError("bad").traceback == ""


@pytest.fixture(scope="module")
def backend():  # type: ignore[no-untyped-def]
    app = Celery("errors-test", backend="cache+memory://", set_as_current=False)
    app.conf.result_serializer = "json"
    app.conf.result_accept_content = ["json"]
    yield app.backend
    app.close()


def celery_round_trip(backend, exc: BaseException) -> BaseException:  # type: ignore[no-untyped-def]
    """What a caller gets back after a node stored ``exc`` as a task's failure."""
    prepared = backend.prepare_exception(exc)
    # The stored form goes through the result serializer (JSON) on its way to the caller.
    encoded = backend.encode(prepared)
    decoded = backend.decode(encoded)
    return backend.exception_to_python(decoded)


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_celery_backend_round_trip_keeps_class(backend, cls: type[SnakepitError]) -> None:  # type: ignore[no-untyped-def]
    exc = cls("it broke", {"pool": "default", "n": 2})
    back = celery_round_trip(backend, exc)
    assert type(back) is cls
    assert back.message == "it broke"
    assert back.details == {"pool": "default", "n": 2}
    assert str(back) == "it broke"


def test_celery_round_trip_adapter_error(backend) -> None:  # type: ignore[no-untyped-def]
    exc = AdapterError(
        "ValueError: bad input",
        {"type": "ValueError", "traceback": "Traceback (most recent call last):\n  ...\n"},
    )
    back = celery_round_trip(backend, exc)
    assert isinstance(back, AdapterError)
    assert back.type == "ValueError"
    assert back.traceback.startswith("Traceback")
    assert back.message == "ValueError: bad input"


def test_celery_round_trip_tool_not_found(backend) -> None:  # type: ignore[no-untyped-def]
    exc = ToolNotFound("unknown tool 'nope'", {"tool": "nope", "available": ["add", "ping"]})
    back = celery_round_trip(backend, exc)
    assert isinstance(back, ToolNotFound)
    assert back.details["available"] == ["add", "ping"]
    assert back.details["tool"] == "nope"


def test_celery_round_trip_without_details(backend) -> None:  # type: ignore[no-untyped-def]
    back = celery_round_trip(backend, errors.QueueTimeout("waited too long"))
    assert type(back) is errors.QueueTimeout
    assert back.details == {}
    assert str(back) == "waited too long"
