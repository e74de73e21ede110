"""The tool bridge through the real stack: host tools registered by this test process or by
another OS process, called by adapters in real runtimes through their node's HostTools socket
and Redis; global tools from a pool's configuration; errors, lifetime, concurrency,
streaming, the thread profile and re-entrancy."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import helpers
import pytest
from helpers import INTEGRATION, WHOAMI_ENV, assert_served_by, cmdline, wait_until

import snakepit_tasks as sp
from snakepit_tasks import errors, sessions

from .host_support import Registrant

pytestmark = pytest.mark.timeout(180)

BRIDGE = "itest_adapters:BridgeAdapter"
GLOBAL_TOOLS = [
    "itest_host_tools:calculate_hash",
    "itest_host_tools:node_pid",
    "itest_host_tools:broken",
]

def new_session() -> str:
    return f"h-{uuid.uuid4().hex[:12]}"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def bridge_node(node: Any, **fields: Any) -> helpers.NodeHandle:
    fields.setdefault("adapter_env", WHOAMI_ENV)
    return node(adapter=BRIDGE, **fields)


@pytest.fixture
def registrant(redis_url: str, pids: helpers.ProcessTracker) -> Any:
    started: list[Registrant] = []

    def start(table: dict[str, Any], session_id: str) -> Registrant:
        r = Registrant(redis_url, table, session_id, pids)
        started.append(r)
        return r

    yield start
    for r in started:
        r.close()


# -- the round trip ----------------------------------------------------------------------------
def test_showcase_gets_the_sha256_from_a_tool_of_this_process(node: Any) -> None:
    n = node()
    sid = new_session()
    sp.register_host_tool(sid, "calculate_hash", lambda data: sha(data),
                          description="SHA-256 of a string")
    try:
        result = sp.execute_in_session(sid, "hash_via_host", {"data": "abc"}, pool=n.pool)
        assert result["hash"] == sha("abc")
        assert_served_by(n, result)
    finally:
        sp.unregister_host_tool(sid, "calculate_hash")


def test_dict_kwargs_and_proxy_calls_and_the_adapters_list(node: Any) -> None:
    n = bridge_node(node)
    sid = new_session()
    seen: list[dict[str, Any]] = []

    @sp.host_tool(sid, description="Join a and b", metadata={"unit": "text", "cost": 1})
    def join(a: str, b: str = "") -> dict[str, Any]:
        seen.append({"a": a, "b": b})
        return {"joined": a + b, "pid": os.getpid()}

    sp.register_host_tool(sid, "hidden", lambda: "secret", exposed=False)
    for style in ("dict", "kwargs", "proxy"):
        result = sp.execute_in_session(
            sid, "call_host", {"name": "join", "args": {"a": style, "b": "!"}, "style": style},
            pool=n.pool,
        )
        assert result["value"] == {"joined": style + "!", "pid": os.getpid()}
        assert_served_by(n, result)
    assert seen == [{"a": s, "b": "!"} for s in ("dict", "kwargs", "proxy")]

    listed = sp.execute_in_session(sid, "list_host", pool=n.pool)
    assert listed["tools"] == [{"name": "join", "description": "Join a and b",
                                "metadata": {"unit": "text", "cost": 1}, "exposed": True,
                                "scope": "session"}]
    assert listed["names"] == ["join"] and listed["has_calculate_hash"] is False
    # The host side sees every tool of the session, exposed or not.
    assert [(s.name, s.exposed) for s in sp.list_host_tools(sid)] == [
        ("hidden", False), ("join", True)]
    hidden = sp.execute_in_session(sid, "try_host", {"name": "hidden"}, pool=n.pool)
    assert hidden["class"] == "ToolNotFound"
    assert hidden["available"] == ["join"]
    for name in ("join", "hidden"):
        assert sp.unregister_host_tool(sid, name)
    assert not sp.unregister_host_tool(sid, "join")
    assert sp.list_host_tools(sid) == []


def test_a_separate_process_as_registrant(node: Any, registrant: Any) -> None:
    n = bridge_node(node)
    sid = new_session()
    other = registrant(n.table, sid)
    result = sp.execute_in_session(sid, "call_host", {"name": "host_pid"}, pool=n.pool)
    assert result["value"] == other.pid != os.getpid()
    assert_served_by(n, result)
    digest = sp.execute_in_session(sid, "call_host",
                                   {"name": "calculate_hash", "args": {"data": "xyz"}},
                                   pool=n.pool)
    assert digest["value"] == sha("xyz")
    assert sorted(s.name for s in sp.list_host_tools(sid)) == ["calculate_hash", "host_pid",
                                                                "slow"]
    other.close()  # a clean exit removes its tools at once
    assert other.proc.returncode == 0, other.lines
    assert sp.list_host_tools(sid) == []


# -- errors ------------------------------------------------------------------------------------
def test_errors_unknown_raising_unencodable_and_to_the_caller(node: Any) -> None:
    n = bridge_node(node)
    sid = new_session()

    def boom(reason: str) -> None:
        raise ValueError(f"bad input: {reason}")

    sp.register_host_tool(sid, "boom", boom)
    sp.register_host_tool(sid, "circular", lambda: (lambda x: x.append(x) or x)([]))
    sp.register_host_tool(sid, "echo", lambda **kw: kw)

    unknown = sp.execute_in_session(sid, "try_host", {"name": "nope"}, pool=n.pool)
    assert unknown["class"] == "ToolNotFound"
    for part in ("'nope'", repr(sid), "boom", "circular", "echo"):
        assert part in unknown["message"]
    assert unknown["available"] == ["boom", "circular", "echo"]

    raised = sp.execute_in_session(sid, "try_host", {"name": "boom", "args": {"reason": "x"}},
                                   pool=n.pool)
    assert raised["class"] == "HostToolError" and "AdapterError" in raised["bases"]
    assert raised["type"] == "ValueError"
    assert "bad input: x" in raised["message"] and "'boom'" in raised["message"]
    assert ", in boom" in raised["traceback"]  # the host's own traceback

    with pytest.raises(errors.AdapterError) as caught:
        sp.execute_in_session(sid, "call_host", {"name": "boom", "args": {"reason": "y"}},
                              pool=n.pool)
    assert "host tool 'boom'" in str(caught.value) and "ValueError" in str(caught.value)
    assert "bad input: y" in str(caught.value)

    bad_args = sp.execute_in_session(sid, "try_host", {"name": "echo", "unencodable": True},
                                     pool=n.pool)
    assert bad_args["class"] == "SerializationError" and "thing" in bad_args["message"]
    bad_result = sp.execute_in_session(sid, "try_host", {"name": "circular"}, pool=n.pool)
    assert bad_result["class"] == "SerializationError"
    assert "circular reference" in bad_result["message"]
    with pytest.raises(errors.SerializationError):  # not caught in the adapter
        sp.execute_in_session(sid, "call_host", {"name": "circular"}, pool=n.pool)

    no_session = sp.execute("try_host", {"name": "echo"}, pool=n.pool)
    assert no_session["class"] == "ToolNotFound" and "no session" in no_session["message"]


def test_a_slow_host_tool_times_out_in_the_adapter(node: Any) -> None:
    n = bridge_node(node, env={"SNAKEPIT_HOST_TOOL_TIMEOUT_MS": "300"})
    sid = new_session()
    release = threading.Event()
    sp.register_host_tool(sid, "slow", lambda: release.wait(60))
    try:
        got = sp.execute_in_session(sid, "try_host", {"name": "slow"}, pool=n.pool, timeout=60)
    finally:
        release.set()
    assert got["class"] == "ExecutionTimeout"
    assert "host_tool_timeout_ms (300)" in got["message"]


def test_the_calls_own_deadline_bounds_the_wait(node: Any) -> None:
    n = bridge_node(node, env={"SNAKEPIT_HOST_TOOL_TIMEOUT_MS": "600000"})
    sid = new_session()
    release = threading.Event()
    sp.register_host_tool(sid, "slow", lambda: release.wait(60))
    try:
        # The adapter's wait ends just before the call's deadline (AdapterError carrying its
        # ExecutionTimeout), or the node's own deadline fires first (ExecutionTimeout).
        with pytest.raises((errors.ExecutionTimeout, errors.AdapterError)) as caught:
            sp.execute_in_session(sid, "call_host", {"name": "slow"}, pool=n.pool, timeout=3)
    finally:
        release.set()
    if isinstance(caught.value, errors.AdapterError):
        assert "deadline" in str(caught.value)
    else:  # the node's deadline came first (a loaded machine): the call's own timeout error
        assert "timeout of 3 s" in str(caught.value)
    # The pool serves again (the worker that timed out is replaced).
    sp.register_host_tool(sid, "fast", lambda: "ok")
    wait_until(lambda: sp.execute_in_session(sid, "call_host", {"name": "fast"}, pool=n.pool),
               timeout=60)


def test_a_registrant_killed_mid_call(node: Any, registrant: Any) -> None:
    n = bridge_node(node, pool_size=2, env={"SNAKEPIT_HOST_TOOL_TIMEOUT_MS": "600000"})
    sid = new_session()
    other = registrant(n.table, sid)
    sp.execute_in_session(sid, "list_host", pool=n.pool)  # binds the session
    in_adapter = sp.execute_in_session_async(sid, "try_host", {"name": "slow"}, pool=n.pool,
                                             timeout=120, affinity="hint")
    wait_until(lambda: other.lines.count("called") == 1, timeout=60,
               message=lambda: f"the first call to reach the registrant: {other.lines}")
    # The session's worker is busy now: with hint affinity this one runs on the other.
    to_caller = sp.execute_in_session_async(sid, "call_host", {"name": "slow"}, pool=n.pool,
                                            timeout=120, affinity="hint")
    wait_until(lambda: other.lines.count("called") == 2, timeout=60,
               message=lambda: f"both calls to reach the registrant: {other.lines}")
    os.kill(other.pid, signal.SIGKILL)
    other.proc.wait(10)
    # Long before the call's timeout (120 s) and host_tool_timeout_ms (600 s):
    seen = in_adapter.get(timeout=60)
    assert seen["class"] == "ExecutionTimeout" and "went away" in seen["message"]
    with pytest.raises(errors.AdapterError) as caught:
        to_caller.get(timeout=60)
    assert "ExecutionTimeout" in str(caught.value) and "went away" in str(caught.value)
    assert "'slow'" in str(caught.value)
    # Its tools stop being offered, and a call to one fails at once, saying why.
    wait_until(lambda: sp.list_host_tools(sid) == [], timeout=30)
    gone = sp.execute_in_session(sid, "try_host", {"name": "host_pid"}, pool=n.pool)
    assert gone["class"] == "ToolNotFound"
    assert f"pid {other.pid}" in gone["message"] and "gone" in gone["message"]


# -- global tools from the pool's configuration -----------------------------------------------
def test_global_tools_from_the_pool_configuration(node: Any) -> None:
    n = bridge_node(node, host_tools=GLOBAL_TOOLS, env={"PYTHONPATH": str(INTEGRATION)})
    sid = new_session()
    result = sp.execute_in_session(sid, "call_host", {"name": "node_pid"}, pool=n.pool)
    assert result["value"] == n.pid  # it ran inside the node, no hop to another process
    assert_served_by(n, result)
    # Every session sees them, and so does a call without a session.
    other = sp.execute_in_session(new_session(), "call_host",
                                  {"name": "calculate_hash", "args": {"data": "q"}},
                                  pool=n.pool)
    assert other["value"] == sha("q")
    plain = sp.execute("call_host", {"name": "calculate_hash", "args": {"data": "q"}},
                       pool=n.pool)
    assert plain["value"] == sha("q")
    listed = sp.execute_in_session(sid, "list_host", pool=n.pool)
    assert [(t["name"], t["scope"]) for t in listed["tools"]] == [
        ("broken", "global"), ("calculate_hash", "global"), ("node_pid", "global")]
    assert listed["tools"][1]["description"] == "SHA-256 of data, computed in the node"
    broken = sp.execute_in_session(sid, "try_host", {"name": "broken"}, pool=n.pool)
    assert broken["class"] == "HostToolError" and broken["type"] == "LookupError"
    # A session's own tool of the same name comes first.
    sp.register_host_tool(sid, "node_pid", lambda: -1)
    assert sp.execute_in_session(sid, "call_host", {"name": "node_pid"},
                                 pool=n.pool)["value"] == -1


def test_a_global_tool_that_cannot_be_imported_stops_the_node(node: Any) -> None:
    n = node(host_tools=["itest_host_tools:missing"], wait=False,
             env={"PYTHONPATH": str(INTEGRATION)})
    assert n.proc.wait(60) == 78  # not restarted by a supervisor: it fails the same way
    assert "host tool 'itest_host_tools:missing' cannot be loaded" in n.output()


# -- concurrency, streaming, the thread profile ----------------------------------------------
def _concurrent_calls(pool: str, sid: str) -> tuple[set[str], int]:
    active = {"now": 0, "max": 0}
    lock = threading.Lock()

    def square(i: int) -> dict[str, Any]:
        with lock:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
        time.sleep(0.1)
        with lock:
            active["now"] -= 1
        return {"i": i, "square": i * i}

    sp.register_host_tool(sid, "square", square)
    try:
        def one(i: int) -> dict[str, Any]:
            return sp.execute_in_session(sid, "call_host",
                                         {"name": "square", "args": {"i": i}}, pool=pool,
                                         affinity="hint", timeout=60)

        with ThreadPoolExecutor(20) as threads:
            results = list(threads.map(one, range(20)))
    finally:
        sp.unregister_host_tool(sid, "square")
    assert [r["value"] for r in results] == [{"i": i, "square": i * i} for i in range(20)]
    return {r["worker_id"] for r in results}, active["max"]


def test_twenty_concurrent_bridged_calls_from_two_workers(node: Any) -> None:
    n = bridge_node(node, pool_size=2)
    sid = new_session()
    workers, most = _concurrent_calls(n.pool, sid)
    assert workers == set(n.worker_ids())  # both workers made bridged calls
    assert most >= 2  # at the same time


def test_twenty_concurrent_bridged_calls_from_a_thread_profile_worker(node: Any) -> None:
    n = bridge_node(node, worker_profile="thread", threads_per_worker=10)
    workers, most = _concurrent_calls(n.pool, new_session())
    assert workers == set(n.worker_ids()) and len(workers) == 1
    assert most >= 2  # several bridged calls of one worker in flight together


def test_a_streaming_tool_calls_host_tools(node: Any) -> None:
    n = bridge_node(node)
    sid = new_session()
    sp.register_host_tool(sid, "double", lambda i: 2 * i)
    stream = sp.stream_in_session(sid, "stream_host", {"name": "double", "n": 4}, pool=n.pool)
    chunks = [(c["i"], c["value"]) for c in stream]
    assert chunks == [(i, 2 * i) for i in range(4)]
    assert stream.result["count"] == 4


# -- lifetime ----------------------------------------------------------------------------------
def test_tools_are_gone_after_sessions_delete(node: Any) -> None:
    n = bridge_node(node)
    sid = new_session()
    sp.register_host_tool(sid, "calculate_hash", lambda data: sha(data))
    assert sp.execute_in_session(sid, "call_host", {"name": "calculate_hash",
                                                    "args": {"data": "a"}},
                                 pool=n.pool)["value"] == sha("a")
    assert sessions.delete(sid)
    assert sp.list_host_tools(sid) == []
    gone = sp.execute_in_session(sid, "try_host", {"name": "calculate_hash"}, pool=n.pool)
    assert gone["class"] == "ToolNotFound"
    # The name is free again in that session.
    sp.register_host_tool(sid, "calculate_hash", lambda data: "again")
    assert sp.execute_in_session(sid, "call_host", {"name": "calculate_hash",
                                                    "args": {"data": "a"}},
                                 pool=n.pool)["value"] == "again"
    sessions.delete(sid)


def test_tools_expire_with_the_session(node: Any, make_app: Any) -> None:
    n = bridge_node(node, env={"SNAKEPIT_SESSION_DEFAULT_TTL": "2"})
    make_app(n.table, session_default_ttl=2)
    sid = new_session()
    sp.register_host_tool(sid, "ping", lambda: "pong")
    assert sp.execute_in_session(sid, "call_host", {"name": "ping"},
                                 pool=n.pool)["value"] == "pong"
    wait_until(lambda: sessions.get(sid) is None and sp.list_host_tools(sid) == [], timeout=30)


# -- re-entrancy -------------------------------------------------------------------------------
def test_a_host_tool_calls_back_into_the_pool(node: Any) -> None:
    n = bridge_node(node, pool_size=2)
    sid = new_session()

    def reenter() -> dict[str, Any]:
        back = sp.execute_in_session(sid, "call_host", {"name": "leaf"}, pool=n.pool,
                                     affinity="hint", timeout=30)
        try:
            sp.execute_in_session(sid, "call_host", {"name": "leaf"}, pool=n.pool,
                                  affinity="strict_queue", timeout=30)
        except errors.WorkerBusy as exc:
            return {"hint": back, "strict": str(exc)}
        return {"hint": back, "strict": "ran"}

    sp.register_host_tool(sid, "reenter", reenter)
    sp.register_host_tool(sid, "leaf", lambda: "leaf")
    first = sp.execute_in_session(sid, "call_host", {"name": "leaf"}, pool=n.pool)
    bound = sessions.get(sid)
    assert bound is not None and bound["worker"] == first["worker_id"]
    got = sp.execute_in_session(sid, "call_host", {"name": "reenter"}, pool=n.pool,
                                affinity="strict_queue", timeout=60)
    assert got["worker_id"] == first["worker_id"]
    hint = got["value"]["hint"]
    assert hint["value"] == "leaf" and hint["worker_id"] != first["worker_id"]
    assert "re-entrant" in got["value"]["strict"]
    assert "'reenter'" in got["value"]["strict"]


# -- the socket --------------------------------------------------------------------------------
def test_the_host_tools_socket_is_private(node: Any) -> None:
    n = bridge_node(node)
    [pid] = n.worker_pids()
    args = cmdline(pid).split()
    path = args[args.index("--host-tools-socket") + 1]
    info = os.stat(path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.getuid()
    assert os.path.dirname(path) == os.path.dirname(args[args.index("--socket") + 1])
