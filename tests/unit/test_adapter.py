"""snakepit_tasks.bridge.adapter: the SDK adapter authors write against."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from snakepit_tasks.bridge import (
    BaseAdapter,
    SessionContext,
    ThreadSafeAdapter,
    ToolSpec,
    thread_safe_method,
    tool,
)


class Sample(BaseAdapter):
    @tool
    def bare(self, x: int) -> int:
        """Bare decorator: the first docstring line is the description.

        Not this line.
        """
        return x

    @tool()
    def empty_call(self) -> None:
        pass

    @tool(description="Explicit wins", idempotent=True)
    def described(self, a: float, b: float = 2.0, *rest: Any, **kw: Any) -> float:
        """Docstring loses."""
        return a + b

    @tool(name="plus")
    def add(self, a: int, b: int) -> int:
        return a + b

    @tool
    def gen(self, n: int = 3) -> Iterator[int]:
        yield from range(n)

    @tool
    async def agen(self) -> Any:
        yield 1

    @tool(supports_streaming=True)
    def declared_stream(self) -> list[int]:
        return [1]

    def helper(self) -> str:
        return "not a tool"


def test_tools_found_by_name() -> None:
    assert set(Sample.tools()) == {
        "bare",
        "empty_call",
        "described",
        "plus",
        "gen",
        "agen",
        "declared_stream",
    }
    assert all(isinstance(spec, ToolSpec) for spec in Sample.tools().values())


def test_tool_without_arguments() -> None:
    spec = Sample.tools()["bare"]
    assert spec.name == "bare"
    assert spec.description == "Bare decorator: the first docstring line is the description."
    assert spec.supports_streaming is False
    assert spec.idempotent is False
    assert Sample().bare(5) == 5  # the decorator returns the method itself


def test_tool_with_empty_parentheses() -> None:
    spec = Sample.tools()["empty_call"]
    assert spec.description == ""
    assert spec.parameters == ()


def test_explicit_description_and_idempotent() -> None:
    spec = Sample.tools()["described"]
    assert spec.description == "Explicit wins"
    assert spec.idempotent is True


def test_parameters_name_annotation_required() -> None:
    # *args/**kwargs are left out; ``self`` too.
    assert Sample.tools()["described"].parameters == (
        ("a", "float", True),
        ("b", "float", False),
    )
    assert Sample.tools()["plus"].parameters == (("a", "int", True), ("b", "int", True))


def test_unannotated_parameter() -> None:
    class Loose(BaseAdapter):
        @tool
        def f(self, x, y=1):  # type: ignore[no-untyped-def]  # noqa: ANN001
            return x

    assert Loose.tools()["f"].parameters == (("x", "", True), ("y", "", False))


def test_name_override() -> None:
    tools = Sample.tools()
    assert "add" not in tools
    assert tools["plus"].name == "plus"
    assert Sample.tool_method_name("plus") == "add"
    assert Sample.tool_method_name("add") is None
    assert Sample.tool_method_name("bare") == "bare"
    assert Sample.tool_method_name("helper") is None
    assert Sample.tool_method_name("nope") is None


def test_generators_stream() -> None:
    tools = Sample.tools()
    assert tools["gen"].supports_streaming is True
    assert tools["agen"].supports_streaming is True
    assert tools["declared_stream"].supports_streaming is True


def test_tools_are_inherited_and_overridable() -> None:
    class Child(Sample):
        @tool(description="child version")
        def bare(self, x: int) -> int:
            return -x

        @tool
        def extra(self) -> str:
            return "e"

    tools = Child.tools()
    assert tools["bare"].description == "child version"
    assert "extra" in tools and "plus" in tools
    assert "extra" not in Sample.tools()


def test_base_adapter_defaults() -> None:
    a = BaseAdapter()
    assert a.session_context == SessionContext()
    assert a.session_context.metadata == {}
    a.initialize()
    a.cleanup()
    assert BaseAdapter.tools() == {}
    assert BaseAdapter.__thread_safe__ is False
    assert ThreadSafeAdapter.__thread_safe__ is True


def test_session_context_metadata_not_shared() -> None:
    one, two = SessionContext(), SessionContext()
    one.metadata["k"] = "v"
    assert two.metadata == {}


class Counter(ThreadSafeAdapter):
    active = 0
    peak = 0

    def _enter_and_sleep(self) -> None:
        type(self).active += 1
        type(self).peak = max(type(self).peak, type(self).active)
        time.sleep(0.05)
        type(self).active -= 1

    @thread_safe_method
    def locked(self, tag: str) -> str:
        """Locked docstring."""
        self._enter_and_sleep()
        return tag

    def unlocked(self) -> None:
        self._enter_and_sleep()

    def with_block(self) -> None:
        with self.acquire_lock():
            self._enter_and_sleep()


def run_in_threads(fn: Any, n: int = 3) -> list[Any]:
    results: list[Any] = []
    barrier = threading.Barrier(n)

    def body(i: int) -> None:
        barrier.wait()
        results.append(fn(i))

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    return results


def test_thread_safe_method_serialises() -> None:
    Counter.active = Counter.peak = 0
    results = run_in_threads(lambda i: Counter().locked(f"t{i}"))
    assert sorted(results) == ["t0", "t1", "t2"]
    assert Counter.peak == 1
    assert Counter.locked.__name__ == "locked"
    assert Counter.locked.__doc__ == "Locked docstring."


def test_acquire_lock_serialises() -> None:
    Counter.active = Counter.peak = 0
    run_in_threads(lambda i: Counter().with_block())
    assert Counter.peak == 1


def test_without_lock_calls_overlap() -> None:
    """Control: the same body without the lock does run concurrently."""
    Counter.active = Counter.peak = 0
    run_in_threads(lambda i: Counter().unlocked())
    assert Counter.peak > 1


def test_lock_is_reentrant() -> None:
    class Nested(ThreadSafeAdapter):
        @thread_safe_method
        def outer(self) -> str:
            return self.inner()

        @thread_safe_method
        def inner(self) -> str:
            with self.acquire_lock():
                return "ok"

    done: list[str] = []
    t = threading.Thread(target=lambda: done.append(Nested().outer()), daemon=True)
    t.start()
    t.join(2)
    assert done == ["ok"]


def test_thread_safe_tool_keeps_its_tool_marker() -> None:
    class Tools(ThreadSafeAdapter):
        @tool(description="safe")
        @thread_safe_method
        def safe(self, n: int) -> int:
            return n

    spec = Tools.tools()["safe"]
    assert spec.description == "safe"
    assert spec.parameters == (("n", "int", True),)
    assert Tools().safe(3) == 3


EAGER_ANNOTATIONS_SOURCE = """
from snakepit_tasks.bridge import BaseAdapter, tool


class Eager(BaseAdapter):
    @tool
    def f(self, a: float, b: list[int]) -> float:
        return a
"""


def test_parameter_annotation_text_without_postponed_annotations() -> None:
    namespace: dict[str, Any] = {}
    code = compile(EAGER_ANNOTATIONS_SOURCE, "<eager>", "exec", dont_inherit=True)
    exec(code, namespace)
    assert namespace["Eager"].tools()["f"].parameters == (
        ("a", "float", True),
        ("b", "list[int]", True),
    )
