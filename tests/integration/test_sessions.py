"""Sessions: binding to one worker, the session id reaching the adapter, spreading, the race
of two first calls, TTL expiry, the quota, listing and deleting (with the adapter's hooks)."""

from __future__ import annotations

import textwrap
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from helpers import assert_served_by, wait_until

import snakepit_tasks as sp
from snakepit_tasks import errors, keys
from snakepit_tasks.app import declare_queue
from snakepit_tasks.tasks import EXECUTE

from .peers import configure, new_session, start_peer

pytestmark = pytest.mark.timeout(120)


# -- local fixtures and helpers -------------------------------------------------------------
def helpers_redis(url: str) -> Any:
    from snakepit_tasks import connections

    return connections.redis_client(url)


def with_db(url: str, db: int) -> str:
    """``url`` pointing at database ``db`` of the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


# -- binding --------------------------------------------------------------------------------
def test_session_id_reaches_adapter_and_50_calls_stay_on_one_worker(node):
    n = node(pool_size=3)
    sid = new_session()

    plain = sp.execute("ping", app=n.app)
    assert_served_by(n, plain)
    assert plain["session_id"] == ""

    pong = sp.execute_in_session(sid, "ping", app=n.app)
    pid = assert_served_by(n, pong)
    assert pong["session_id"] == sid  # self.session_context.session_id
    info = sp.sessions.get(sid, app=n.app)
    assert info is not None
    assert info["worker"] == pong["worker_id"]
    assert info["node"] == n.name and info["pool"] == n.pool
    assert 0 < info["ttl"] <= 3600

    key = f"k-{uuid.uuid4().hex}"
    stored = sp.execute_in_session(sid, "remember", {"key": key, "value": [1, "two"]}, app=n.app)
    assert stored["pid"] == pid
    for i in range(50):
        got = sp.execute_in_session(sid, "recall", {"key": key}, app=n.app)
        assert got["found"] is True, f"call {i} ran on another process: {got}"
        assert got["value"] == [1, "two"]
        assert got["pid"] == pid and got["worker_id"] == info["worker"]
    assert_served_by(n, got)
    after = sp.sessions.get(sid, app=n.app)
    assert after is not None
    assert after["worker"] == info["worker"] and after["created"] == info["created"]
    assert after["last_used"] > info["last_used"]
    # The other workers never saw the key: the state is process-local.
    assert not sp.execute("recall", {"key": f"other-{key}"}, app=n.app)["found"]


def test_many_sessions_spread_over_all_workers(node):
    n = node(pool_size=3)
    sids = [new_session() for _ in range(12)]

    # The first calls of twelve sessions arrive together: every worker takes some.
    def first(sid: str) -> dict[str, Any]:
        return sp.execute_in_session(sid, "sleep", {"seconds": 0.3}, app=n.app, timeout=60)

    with ThreadPoolExecutor(len(sids)) as ex:
        results = dict(zip(sids, ex.map(first, sids), strict=True))
    for r in results.values():
        assert_served_by(n, r)
    per_worker = Counter(r["worker_id"] for r in results.values())
    assert set(per_worker) == set(n.worker_ids()), per_worker

    # Each session is bound where its first call ran, and stays there.
    for sid, r in results.items():
        info = sp.sessions.get(sid, app=n.app)
        assert info is not None and info["worker"] == r["worker_id"]
        again = sp.execute_in_session(sid, "ping", app=n.app)
        assert again["pid"] == r["pid"] and again["session_id"] == sid
    listed = {s["session_id"] for s in sp.sessions.list_sessions(n.pool, app=n.app)}
    assert listed == set(sids)


def test_sessions_started_one_after_another_spread_over_workers(node):
    n = node(pool_size=3)
    bound = Counter()
    for _ in range(12):
        pong = sp.execute_in_session(new_session(), "ping", app=n.app)
        assert_served_by(n, pong)
        bound[pong["worker_id"]] += 1
    assert set(bound) == set(n.worker_ids()), f"sessions per worker: {dict(bound)}"


def test_concurrent_first_calls_of_a_new_session_end_on_one_worker(node, redis_url):
    # Two nodes of one pool: the loser of the race may be on the other node (redirect) or on
    # the same node (waits for the bound worker); either way both calls run on one worker.
    # (strict_queue: with the default hint, a call that finds the bound worker busy runs
    # elsewhere by design, and whether the second call finds it busy is a matter of timing.)
    a = node(pool_size=1, name=f"race{uuid.uuid4().hex[:6]}@a")
    b = start_peer(node, a, f"{a.pool}@b")
    app = configure(redis_url, a, b)
    pids = set(a.worker_pids()) | set(b.worker_pids())
    for _ in range(4):
        sid = new_session()
        with ThreadPoolExecutor(2) as ex:
            futures = [
                ex.submit(
                    sp.execute_in_session, sid, "sleep", {"seconds": 0.3}, app=app, timeout=60,
                    affinity="strict_queue",
                )
                for _ in range(2)
            ]
            results = [f.result() for f in futures]
        assert results[0]["pid"] == results[1]["pid"], results
        assert results[0]["worker_id"] == results[1]["worker_id"]
        assert results[0]["pid"] in pids
        owner = a if results[0]["worker_id"].startswith(a.name + "/") else b
        assert_served_by(owner, results[0])
        info = sp.sessions.get(sid, app=app)
        assert info is not None and info["worker"] == results[0]["worker_id"]

    # What the losing call does, made deterministic: calls of a bound session that reach the
    # pool queue (routing bypassed) are taken by either node and all end on the bound worker.
    bound = results[0]
    pool_queue = declare_queue(keys.pool_queue(a.pool))
    sent = [
        app.send_task(
            EXECUTE,
            kwargs={
                "command": "ping",
                "pool": a.pool,
                "session_id": sid,
                "deadline": time.time() + 60,
            },
            queue=pool_queue,
        )
        for _ in range(6)
    ]
    for result in sent:
        pong = result.get(timeout=60)
        assert pong["pid"] == bound["pid"] and pong["session_id"] == sid


# -- lifetime -------------------------------------------------------------------------------
def test_session_ttl_refreshed_on_use_then_expires(node, node_env, redis_url):
    node_env["SNAKEPIT_SESSION_DEFAULT_TTL"] = "2"
    n = node(pool_size=1)
    app = configure(redis_url, n, session_default_ttl=2)
    sid = new_session()

    pong = sp.execute_in_session(sid, "ping", app=app)
    assert_served_by(n, pong)
    info = sp.sessions.get(sid, app=app)
    assert info is not None and 0 < info["ttl"] <= 2

    # Used more often than its TTL, the session lives on (well past 2 s in all).
    for _ in range(6):
        time.sleep(0.4)
        assert sp.execute_in_session(sid, "ping", app=app)["pid"] == pong["pid"]
        current = sp.sessions.get(sid, app=app)
        assert current is not None and current["created"] == info["created"]

    # Unused, it expires.
    wait_until(
        lambda: sp.sessions.get(sid, app=app) is None, timeout=15, message="the session to expire"
    )
    assert sid not in {s["session_id"] for s in sp.sessions.list_sessions(n.pool, app=app)}

    # The same id starts a new session.
    again = sp.execute_in_session(sid, "ping", app=app)
    assert_served_by(n, again)
    fresh = sp.sessions.get(sid, app=app)
    assert fresh is not None and fresh["created"] > info["created"]


class TestQuota:
    """The quota counts every session on the Redis: run on a database of its own."""

    @pytest.fixture
    def redis_url(self, redis_url: str) -> str:
        return with_db(redis_url, 3)

    def test_index_pruned_every_cleanup_interval_and_warning_at_threshold(
        self, node, node_env, redis_url
    ):
        """session_cleanup_interval: expired sessions leave the index without anyone listing
        them; session_warning_threshold: the node warns once the count nears the quota."""
        node_env.update(
            SNAKEPIT_SESSION_DEFAULT_TTL="1",
            SNAKEPIT_SESSION_CLEANUP_INTERVAL="200",
            SNAKEPIT_SESSION_MAX_SESSIONS="4",
            SNAKEPIT_SESSION_WARNING_THRESHOLD="0.5",
        )
        n = node(pool_size=1)
        app = configure(redis_url, n, session_default_ttl=1)
        r = helpers_redis(redis_url)
        sids = [new_session() for _ in range(2)]

        def warned() -> bool:
            # Both sessions kept alive (1 s TTL) until the janitor has counted them, also on
            # a machine slow enough that a second passes between its sweeps.
            for sid in sids:
                sp.execute_in_session(sid, "ping", app=app)
            return "session_warning_threshold" in n.output()

        wait_until(warned, timeout=30, interval=0.2,
                   message="the session quota warning in the node's log")
        wait_until(lambda: r.zcard(keys.sessions()) == 0, timeout=15,
                   message="expired sessions pruned from the index")

    @pytest.fixture(autouse=True)
    def _no_sessions(self, redis_url: str) -> None:
        """This database holds only these tests' sessions: start each test with none."""
        r = helpers_redis(redis_url)
        for sid in r.zrange(keys.sessions(), 0, -1):
            r.delete(keys.session(sid.decode()))
        r.delete(keys.sessions())

    def test_fourth_session_exceeds_quota_existing_ones_still_work(self, node, node_env, redis_url):
        node_env["SNAKEPIT_SESSION_MAX_SESSIONS"] = "3"
        n = node(pool_size=2)
        app = configure(redis_url, n, session_max_sessions=3)
        assert urlsplit(redis_url).path == "/3"

        sids = [new_session() for _ in range(3)]
        bound = {}
        for sid in sids:
            pong = sp.execute_in_session(sid, "ping", app=app)
            assert_served_by(n, pong)
            bound[sid] = pong["pid"]

        extra = new_session()
        with pytest.raises(errors.SessionQuotaExceeded) as info:
            sp.execute_in_session(extra, "ping", app=app)
        assert extra in str(info.value) and "session_max_sessions" in str(info.value)
        assert sp.sessions.get(extra, app=app) is None

        for sid in sids:  # existing sessions are unaffected
            pong = sp.execute_in_session(sid, "ping", app=app)
            assert pong["pid"] == bound[sid] and pong["session_id"] == sid
        listed = {s["session_id"] for s in sp.sessions.list_sessions(n.pool, app=app)}
        assert listed == set(sids)

        # Ending one makes room.
        assert sp.sessions.delete(sids[0], app=app) is True
        pong = sp.execute_in_session(extra, "ping", app=app)
        assert_served_by(n, pong)
        assert pong["session_id"] == extra


HOOK_ADAPTER = textwrap.dedent(
    """
    import os

    from snakepit_tasks.bridge import BaseAdapter, tool


    def _log(event, session_id):
        with open(os.environ["HOOK_LOG"], "a") as f:
            f.write(f"{event} {session_id} {os.getpid()}\\n")


    class HookAdapter(BaseAdapter):
        def initialize_session(self):
            _log("init", self.session_context.session_id)

        def cleanup_session(self):
            _log("cleanup", self.session_context.session_id)

        @tool(description="Report the process and session serving this call")
        def whoami(self):
            return {"pid": os.getpid(), "worker_id": self.session_context.worker_id,
                    "session_id": self.session_context.session_id}
    """
)


def test_list_and_delete_run_the_adapter_session_hooks(node, tmp_path: Path):
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    (adapters / "hook_adapters.py").write_text(HOOK_ADAPTER)
    log = tmp_path / "hooks.log"
    n = node(
        pool_size=2,
        adapter="hook_adapters:HookAdapter",
        adapter_env={"PYTHONPATH": str(adapters), "HOOK_LOG": str(log)},
    )

    def events() -> list[tuple[str, str, int]]:
        if not log.exists():
            return []
        lines = (line.split() for line in log.read_text().split("\n") if line)
        return [(e, s, int(p)) for e, s, p in lines]

    s1, s2 = new_session(), new_session()
    who1 = sp.execute_in_session(s1, "whoami", app=n.app)
    who2 = sp.execute_in_session(s2, "whoami", app=n.app)
    assert_served_by(n, who1)
    assert_served_by(n, who2)
    assert who1["session_id"] == s1 and who2["session_id"] == s2
    # initialize_session ran once per new session, on the worker that bound it
    assert events() == [("init", s1, who1["pid"]), ("init", s2, who2["pid"])]
    sp.execute_in_session(s1, "whoami", app=n.app)
    assert len(events()) == 2, "a bound session is not initialised again"

    listed = sp.sessions.list_sessions(n.pool, app=n.app)
    assert {s["session_id"] for s in listed} == {s1, s2}
    assert listed[0]["session_id"] == s1, "most recently used first"
    assert all(s["pool"] == n.pool and s["node"] == n.name for s in listed)

    assert sp.sessions.delete(s1, app=n.app) is True
    assert ("cleanup", s1, who1["pid"]) in events()  # on the bound worker
    assert sp.sessions.get(s1, app=n.app) is None
    assert {s["session_id"] for s in sp.sessions.list_sessions(n.pool, app=n.app)} == {s2}
    assert sp.sessions.delete(s1, app=n.app) is False
    assert sp.sessions.delete(new_session(), app=n.app) is False

    # The same id starts afresh (initialised again).
    again = sp.execute_in_session(s1, "whoami", app=n.app)
    assert_served_by(n, again)
    assert events()[-1] == ("init", s1, again["pid"])
