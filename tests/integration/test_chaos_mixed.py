"""Chaos, bounded: at least 1,000 mixed calls from several threads while runtimes are
SIGKILLed, a node is SIGKILLed and a replacement node starts.

Two nodes of two workers each serve one pool of the recording adapter (every run of
``record`` / ``record_stream`` appends its call id and tag to a file). Caller threads send
synchronous calls, ``execute_async`` calls, session calls (both kinds) and streams. Then:

- every call is accounted for: its result, or exactly one SnakepitError (no raw exception);
- none is lost: no caller waits past its call's timeout (no ExecutionTimeout), every thread
  ends;
- none ran twice: no call id appears twice in the run log; a call that timed out in the
  queue never ran; each result of the recording tools names a run in the log;
- none has two outcomes: what an ``AsyncResult`` caller or a stream reader got is what the
  result backend says (read by a second app with an empty cache); no direct reply is left
  over for a synchronous call whose caller already has its outcome, or contradicts it;
- a stream's chunks are 1..k in order, and its final result names all n of them.

A one-line summary is printed.
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import RECORDING, WHOAMI_ENV, NodeHandle, pool_table, unique_pool, wait_until

import snakepit_tasks as sp
from snakepit_tasks import caller, connections, errors, keys, kombu_redis, replies
from snakepit_tasks.app import create_app

from .test_chaos_support import chaos_nodes, redis_of, start_serving

pytestmark = pytest.mark.timeout(300)

CALLS = 1_000  # at least this many calls are sent
THREADS = 6
WORKERS = 2  # per node
SEND_LIMIT = 80.0  # seconds: callers stop sending after this even below CALLS (then: fail)
CALL_TIMEOUT = 30.0  # each call's own timeout; small calls that hit it were lost
QUEUE_TIMEOUT_MS = 25_000
STREAM_CHUNKS = 4
NODE_ENV = {"SNAKEPIT_POOL_QUEUE_TIMEOUT": str(QUEUE_TIMEOUT_MS)}
# One round of call kinds per thread, repeated: records, an add, a ping, sessions, a stream.
ROUND = ("sync", "async", "session", "sync", "session_async", "stream", "add", "async",
         "session", "ping")


@dataclass
class Seen:
    """One call as its caller saw it."""

    kind: str
    tag: str
    call_id: str | None = None
    result: Any = None
    error: BaseException | None = None
    chunks: list[tuple[int, int]] = field(default_factory=list)  # (seq, i) per chunk


@pytest.fixture
def chaos_node(node: Any, pids: Any, tmp_path: Path) -> Iterator[Any]:
    yield from chaos_nodes(node, pids, tmp_path)


class Callers:
    """Threads that send the mixed calls and remember what each caller got."""

    def __init__(self, app: Any, runs: Path) -> None:
        self.app = app
        self.runs = str(runs)
        self.seen: list[Seen] = []
        self.crashed: list[BaseException] = []  # bugs in this test's own threads
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self.enough = threading.Event()  # set by the test: stop sending
        self.threads = [threading.Thread(target=self._run, args=(t,), name=f"caller-{t}",
                                         daemon=True) for t in range(THREADS)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    @property
    def sent(self) -> int:
        with self._lock:
            return len(self.seen)

    def _run(self, thread: int) -> None:
        sessions = [f"chaos-{thread}-{k}-{os.urandom(3).hex()}" for k in range(2)]
        try:
            for i in itertools.count():
                if self.enough.is_set():
                    return
                kind = ROUND[(i + thread) % len(ROUND)]
                seen = Seen(kind, f"t{thread}-{i}-{next(self._counter)}")
                with self._lock:
                    self.seen.append(seen)
                self._call(seen, sessions[i % 2], i)
        except BaseException as exc:
            self.crashed.append(exc)

    def _call(self, seen: Seen, session: str, i: int) -> None:
        app, record = self.app, {"runs": self.runs, "value": seen.tag}
        try:
            if seen.kind == "sync":
                seen.result = sp.execute("record", record, timeout=CALL_TIMEOUT, app=app)
            elif seen.kind == "add":
                seen.result = sp.execute("add", {"a": i, "b": 1}, timeout=CALL_TIMEOUT, app=app)
            elif seen.kind == "session":
                seen.result = sp.execute_in_session(session, "record", record,
                                                    timeout=CALL_TIMEOUT, app=app)
            elif seen.kind in ("async", "session_async", "ping"):
                if seen.kind == "async":
                    sent = sp.execute_async("record", record, timeout=CALL_TIMEOUT, app=app)
                elif seen.kind == "ping":
                    sent = sp.execute_async("ping", timeout=CALL_TIMEOUT, app=app)
                else:
                    sent = sp.execute_in_session_async(session, "record", record,
                                                       timeout=CALL_TIMEOUT, app=app)
                seen.call_id = sent.id
                seen.result = caller.wait(sent, timeout=CALL_TIMEOUT + 10)
            else:
                stream = sp.stream("record_stream", {**record, "n": STREAM_CHUNKS},
                                   timeout=CALL_TIMEOUT, app=app)
                seen.call_id = stream.id
                for chunk in stream:
                    seen.chunks.append((chunk["_metadata"]["seq"], chunk["i"]))
                seen.result = stream.result
        except errors.SnakepitError as exc:
            seen.error = exc
        except Exception as exc:  # a raw exception reached a caller: reported below
            seen.error = exc


class Chaos:
    """SIGKILLs runtimes of live nodes, then node B, starts a replacement, kills more
    runtimes; records what it did."""

    def __init__(self, start_node: Callable[[str], NodeHandle], a: NodeHandle,
                 b: NodeHandle) -> None:
        self.start_node = start_node
        self.nodes = [a, b]
        self.killed_runtimes: list[int] = []
        self.done = threading.Event()
        self.failed: list[BaseException] = []
        self.replacement: NodeHandle | None = None
        self._rand = random.Random(9)
        self.thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def kill_runtime(self, n: NodeHandle) -> None:
        pids = n.worker_pids()
        if pids:
            pid = self._rand.choice(pids)
            try:
                os.kill(pid, signal.SIGKILL)
                self.killed_runtimes.append(pid)
            except OSError:
                pass

    def _run(self) -> None:
        a, b = self.nodes
        try:
            time.sleep(3)
            self.kill_runtime(a)
            time.sleep(2)
            self.kill_runtime(b)
            time.sleep(2)
            os.kill(b.pid, signal.SIGKILL)
            b.proc.wait(10)
            self.replacement = c = self.start_node("c")
            self.nodes.append(c)
            time.sleep(2)
            self.kill_runtime(c)
            time.sleep(2)
            self.kill_runtime(a)
            time.sleep(3)  # calls served after the last kill too
        except BaseException as exc:
            self.failed.append(exc)
        finally:
            self.done.set()


def run_log(path: Path) -> list[tuple[str, str]]:
    """(call id, tag) of every run of the recording tools."""
    if not path.exists():
        return []
    return [tuple(line.split(" ", 1)) for line in path.read_text().splitlines()]  # type: ignore[misc]


def trail(r: Any, call_id: str | None) -> str:
    """Where a call stands in Redis: its state, and whether kombu still holds its message."""
    if call_id is None:
        return "id unknown"
    state = r.get(keys.call_state(call_id))
    held = [connections.text(tag) for tag, v in r.hgetall(kombu_redis.UNACKED).items()
            if call_id in connections.text(v)]
    delivered = [r.zscore(kombu_redis.UNACKED_INDEX, tag) for tag in held]
    queued = [connections.text(q) for q in r.scan_iter(match="snakepit.*", count=1000)
              if r.type(q) == b"list" and any(call_id in connections.text(m)
                                              for m in r.lrange(q, 0, -1))]
    return (f"state {connections.text(state) if state else None}, unacked {held} "
            f"delivered at {delivered}, queued in {queued}, now {time.time():.1f}")


def same_outcome(seen: Seen, state: str, stored: Any) -> bool:
    if seen.error is not None:
        return state == "FAILURE" and type(stored) is type(seen.error)
    return state == "SUCCESS" and stored == seen.result


def test_a_thousand_mixed_calls_under_chaos_each_have_one_outcome(
    chaos_node: Any, make_app: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = unique_pool("mx")
    fields = {"adapter": RECORDING, "adapter_env": WHOAMI_ENV}
    app = make_app(pool_table(pool, pool_size=WORKERS, **fields),
                   pool_queue_timeout=QUEUE_TIMEOUT_MS)
    log = tmp_path / "runs.txt"

    def start(name: str) -> NodeHandle:
        return start_serving(chaos_node, app, WORKERS, pool=pool, name=f"{pool}-{name}@itest",
                             env=NODE_ENV, **fields)

    a, b = start("a"), start("b")
    r = redis_of(a)
    # Replies other tests of this session left (they expire): not this test's calls.
    earlier = set(r.scan_iter(match=keys.reply("*"), count=1000))
    began = time.monotonic()
    callers = Callers(app, log)
    chaos = Chaos(start, a, b)
    callers.start()
    chaos.thread.start()
    wait_until(lambda: chaos.done.is_set() and callers.sent >= CALLS, timeout=SEND_LIMIT,
               interval=0.2, message=lambda: f"{CALLS} calls sent and the chaos over "
                                             f"({callers.sent} sent)")
    callers.enough.set()
    for t in callers.threads:
        t.join(CALL_TIMEOUT + 30)
    wall = time.monotonic() - began
    hung = [t.name for t in callers.threads if t.is_alive()]
    assert not hung, f"callers still waiting: {hung}"
    assert not callers.crashed and not chaos.failed, (callers.crashed, chaos.failed)
    assert chaos.replacement is not None

    seen = callers.seen
    runs = run_log(log)
    run_count = collections.Counter(call_id for call_id, _ in runs)
    runs_by_tag: dict[str, list[str]] = collections.defaultdict(list)
    for call_id, tag in runs:
        runs_by_tag[tag].append(call_id)
    recorded = {"sync", "async", "session", "session_async", "stream"}
    for s in seen:  # a synchronous caller's call id: from its error, or the run log
        details = getattr(s.error, "details", None) or {}
        if s.call_id is None:
            s.call_id = details.get("task_id") or details.get("call_id")
        if s.call_id is None and s.kind in recorded and len(runs_by_tag[s.tag]) == 1:
            s.call_id = runs_by_tag[s.tag][0]

    problems: dict[str, list[str]] = collections.defaultdict(list)
    raw = [s for s in seen if s.error is not None and not isinstance(s.error, errors.SnakepitError)]
    problems["raw exception"] = [f"{s.kind} {s.tag}: {s.error!r}" for s in raw]
    problems["lost"] = [f"{s.kind} {s.tag} {s.call_id}: {s.error} ({trail(r, s.call_id)})"
                        for s in seen if isinstance(s.error, errors.ExecutionTimeout)]
    problems["ran twice"] = [f"{i} x{n}" for i, n in run_count.items() if n > 1]
    problems["ran twice"] += [f"tag {t}: {ids}" for t, ids in runs_by_tag.items() if len(ids) > 1]
    for s in seen:
        if s.error is None:
            if s.kind in recorded:
                if s.result.get("value") != s.tag or s.result.get("call_id") not in run_count:
                    problems["wrong result"].append(f"{s.kind} {s.tag}: {s.result!r}")
                if s.call_id is not None and s.result.get("call_id") != s.call_id:
                    problems["wrong result"].append(f"{s.kind} {s.tag} id {s.call_id}: "
                                                    f"{s.result!r}")
            elif s.kind == "add" and s.result != int(s.tag.split("-")[1]) + 1:
                problems["wrong result"].append(f"add {s.tag}: {s.result!r}")
            elif s.kind == "ping" and s.result.get("status") != "pong":
                problems["wrong result"].append(f"ping {s.tag}: {s.result!r}")
        elif isinstance(s.error, errors.QueueTimeout) and runs_by_tag.get(s.tag):
            problems["ran after a queue timeout"].append(f"{s.kind} {s.tag}")
        if s.kind == "stream":
            got = [i for _, i in s.chunks]
            seqs = [q for q, _ in s.chunks]
            if got != list(range(1, len(got) + 1)) or seqs != got:
                problems["stream gap"].append(f"{s.tag}: {s.chunks}")
            if s.error is None and (len(got) != STREAM_CHUNKS
                                    or s.result.get("count") != STREAM_CHUNKS
                                    or s.result.get("call_id") != s.call_id):
                problems["stream result"].append(f"{s.tag}: {got} {s.result!r}")

    # What the backend says, read by an app of its own (an empty result cache).
    observer = create_app(app.snakepit_settings)
    settle_by = time.monotonic() + 15
    try:
        for s in seen:
            if s.kind not in ("async", "session_async", "ping", "stream") or s.call_id is None:
                continue
            stored = observer.AsyncResult(s.call_id)
            while (state := stored.state) == "PENDING" and time.monotonic() < settle_by:
                time.sleep(0.1)  # a stream's final entry comes just before its result is stored
            if not same_outcome(s, state, stored.result):
                problems["two outcomes"].append(
                    f"{s.kind} {s.tag} {s.call_id}: caller {s.error or s.result!r}, "
                    f"backend {state} {stored.result!r} ({trail(r, s.call_id)})")
    finally:
        observer.close()
    # A direct reply nobody popped is a second outcome of a call whose caller has one.
    by_id = {s.call_id: s for s in seen if s.call_id is not None}
    leftovers = [connections.text(k)[len(keys.reply("")):]
                 for k in r.scan_iter(match=keys.reply("*"), count=1000) if k not in earlier]
    for call_id in leftovers:
        for body in r.lrange(keys.reply(call_id), 0, -1):
            try:
                left: Any = replies.outcome(bytes(body))
                left_error: BaseException | None = None
            except errors.SnakepitError as exc:
                left, left_error = None, exc
            s = by_id.get(call_id)
            if s is None or s.error is None or type(left_error) is not type(s.error):
                problems["two outcomes"].append(
                    f"left-over reply for {call_id} ({s.kind if s else 'unknown call'}): "
                    f"{left_error or left!r}; the caller got "
                    f"{(s.error or s.result) if s else '?'!r}")

    stats = sp.get_stats(pool, app=app)
    results = sum(1 for s in seen if s.error is None)
    by_class = collections.Counter(type(s.error).__name__ for s in seen if s.error is not None)
    queue_timeouts = by_class.get("QueueTimeout", 0)
    if stats["queue_timeouts"] != queue_timeouts:
        problems["counters"].append(f"queue_timeouts {stats['queue_timeouts']} counted, "
                                    f"{queue_timeouts} seen")
    if stats["requests"] < results:
        problems["counters"].append(f"requests {stats['requests']} < {results} results")
    found = {k: v for k, v in problems.items() if v}
    kinds = collections.Counter(s.kind for s in seen)
    with capsys.disabled():
        print(
            f"\nchaos summary: {len(seen)} calls ({dict(kinds)}) from {THREADS} threads in "
            f"{wall:.1f}s; {results} results; errors {dict(by_class)}; {len(runs)} runs of "
            f"{len(run_count)} recorded calls; run twice {len(problems['ran twice'])}; two "
            f"outcomes {len(problems['two outcomes'])}; lost {len(problems['lost'])}; "
            f"{len(chaos.killed_runtimes)} runtimes killed, node {b.name} killed, "
            f"{chaos.replacement.name} started; counters requests={stats['requests']} "
            f"errors={stats['errors']} queue_timeouts={stats['queue_timeouts']}"
        )
        for what, items in found.items():
            print(f"  {what} ({len(items)}): " + "\n    ".join(items[:5]))
    assert len(seen) >= CALLS
    assert not found, {k: v[:5] for k, v in found.items()}
