"""broker/fast_take.lua and broker/release_claim.lua on a real Redis: the fast lane's take
claims a plain call in the same round trip, exactly as start_call.lua would, and leaves
everything else to the node with nothing changed."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from snakepit_tasks import connections, fast_lane, keys, lua
from snakepit_tasks.call import CLEANUP_COMMAND, Call
from snakepit_tasks.node.claim import CALL_STATE_MARGIN_MS

NODE, POOL = "ftake@host", "ftake"


@pytest.fixture
def r(redis_url: str) -> Any:
    client = connections.redis_client(redis_url)
    names = [keys.fast_landing(NODE, "pool"), keys.fast_processing(NODE), keys.busy(NODE),
             keys.fast_clock(NODE, "pool")]
    client.delete(*names)
    yield client
    client.delete(*names)


def message(**fields: Any) -> tuple[str, bytes]:
    call_id = str(uuid.uuid4())
    now = time.time()
    call = Call(command="ping", pool=POOL, deadline=now + 30, enqueued_at=now, reply=True)
    return call_id, fast_lane.encode(call_id, call.replace(**fields))


def take(r: Any, raw: bytes | None, free: list[str], max_bytes: int = 16384,
         now: float | None = None) -> list[Any]:
    """Put ``raw`` in the landing list (as the BLMOVE does) and run the script behind it."""
    landing, clock = keys.fast_landing(NODE, "pool"), keys.fast_clock(NODE, "pool")
    if raw is not None:
        r.lpush(landing, raw)
    reply = lua.script(r, "fast_take")(
        keys=[landing, keys.fast_processing(NODE), keys.sessions(), keys.busy(NODE), clock],
        args=[NODE, POOL, repr(time.time() if now is None else now), 3600, 10_000,
              CALL_STATE_MARGIN_MS,
              keys.call_state(""), keys.session(""), max_bytes, CLEANUP_COMMAND, "7", *free],
    )
    if raw is not None and len(r.lrange(landing, 0, -1)) == 0:
        assert raw in r.lrange(keys.fast_processing(NODE), 0, -1)  # moved on to processing
    return [connections.text(x) if isinstance(x, bytes) and i != 1 else x
            for i, x in enumerate(reply)]


def state(r: Any, call_id: str) -> str:
    return connections.text(r.get(keys.call_state(call_id)) or b"")


def busy(r: Any, worker: str) -> int:
    return int(r.hget(keys.busy(NODE), worker) or 0)


def test_nothing_taken(r: Any) -> None:
    assert take(r, None, [f"{NODE}/0"])[0] == "none"


def test_a_plain_call_is_claimed_for_the_first_worker_named(r: Any) -> None:
    call_id, raw = message()
    status, moved, worker, claimed_id = take(r, raw, [f"{NODE}/1", f"{NODE}/0"])
    assert (status, moved, worker, claimed_id) == ("ok", raw, f"{NODE}/1", call_id)
    assert state(r, call_id) == f"started:{NODE}"
    assert busy(r, f"{NODE}/1") == 1
    assert r.lrange(keys.fast_processing(NODE), 0, -1) == [raw]
    ttl = r.pttl(keys.call_state(call_id))
    assert CALL_STATE_MARGIN_MS < ttl <= CALL_STATE_MARGIN_MS + 30_000

    # Handed back (its slot went to another call): not started, not counted.
    release = lua.script(r, "release_claim")
    assert release(keys=[keys.call_state(call_id), keys.busy(NODE)],
                   args=[NODE, f"{NODE}/1"]) == 1
    assert state(r, call_id) == ""
    assert busy(r, f"{NODE}/1") == 0


@pytest.mark.parametrize("fields", [
    {"command": CLEANUP_COMMAND},
    {"requires": ("cuda",)},
    {"pool": "other"},
    {"deadline": None},
])
def test_calls_the_node_must_look_at_first_are_left_to_it(r: Any, fields: dict[str, Any]) -> None:
    call_id, raw = message(**fields)
    assert take(r, raw, [f"{NODE}/0"])[:3] == ["skip", raw, ""]
    assert state(r, call_id) == "" and busy(r, f"{NODE}/0") == 0
    assert r.lrange(keys.fast_processing(NODE), 0, -1) == [raw]


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'{"id": "", "call": {}}',
                                 b'{"id": "x", "call": {"command": 5}}'])
def test_a_message_it_cannot_read_is_left_to_the_node(r: Any, raw: bytes) -> None:
    assert take(r, raw, [f"{NODE}/0"])[:2] == ["skip", raw]
    assert busy(r, f"{NODE}/0") == 0


def test_a_long_message_is_left_to_the_node(r: Any) -> None:
    call_id, raw = message(args={"x": "y" * 100})
    assert take(r, raw, [f"{NODE}/0"], max_bytes=len(raw) - 1)[0] == "skip"
    assert state(r, call_id) == ""


def test_a_pinned_call_is_claimed_for_its_own_worker_only(r: Any) -> None:
    call_id, raw = message(worker=f"{NODE}/0", session_id=None)
    assert take(r, raw, [f"{NODE}/1"])[0] == "skip"  # its worker is not ready
    assert state(r, call_id) == ""
    call_id, raw = message(worker=f"{NODE}/0")
    assert take(r, raw, [f"{NODE}/1", f"{NODE}/0"])[:3] == ["ok", raw, f"{NODE}/0"]


def test_a_session_is_never_bound_here_but_a_bound_one_is_refreshed(r: Any) -> None:
    sid = f"s-{uuid.uuid4()}"
    call_id, raw = message(session_id=sid)
    assert take(r, raw, [f"{NODE}/0"])[0] == "skip"  # binding: the node's (and its hook)
    assert not r.exists(keys.session(sid)) and state(r, call_id) == ""

    r.hset(keys.session(sid), mapping={"worker": f"{NODE}/0", "node": NODE, "last_used": 1})
    call_id, raw = message(session_id=sid, worker=f"{NODE}/0")
    assert take(r, raw, [f"{NODE}/0"])[:3] == ["ok", raw, f"{NODE}/0"]
    assert float(r.hget(keys.session(sid), "last_used")) > 1
    assert r.ttl(keys.session(sid)) > 0

    # Bound elsewhere: start_call says 'moved', and nothing is claimed.
    call_id, raw = message(session_id=sid)
    assert take(r, raw, [f"{NODE}/1"])[0] == "skip"
    assert state(r, call_id) == ""
    r.delete(keys.session(sid))
    r.zrem(keys.sessions(), sid)


@pytest.mark.parametrize("before", ["timed_out", "started:other@host", f"done:{NODE}"])
def test_a_call_timed_out_or_started_elsewhere_is_left_as_it_is(r: Any, before: str) -> None:
    call_id, raw = message()
    r.set(keys.call_state(call_id), before, px=60_000)
    assert take(r, raw, [f"{NODE}/0"])[0] == "skip"
    assert state(r, call_id) == before and busy(r, f"{NODE}/0") == 0


def test_a_call_another_node_held_waiting_is_claimed(r: Any) -> None:
    call_id, raw = message()
    r.set(keys.call_state(call_id), "taken:other@host", px=60_000)
    assert take(r, raw, [f"{NODE}/0"])[0] == "ok"
    assert state(r, call_id) == f"started:{NODE}"


def test_release_claim_leaves_a_state_it_did_not_make(r: Any) -> None:
    call_id, _ = message()
    r.set(keys.call_state(call_id), "timed_out", px=60_000)
    r.hset(keys.busy(NODE), f"{NODE}/0", 1)
    release = lua.script(r, "release_claim")
    assert release(keys=[keys.call_state(call_id), keys.busy(NODE)],
                   args=[NODE, f"{NODE}/0"]) == 0
    assert state(r, call_id) == "timed_out" and busy(r, f"{NODE}/0") == 0


def test_the_claim_is_dated_when_the_call_came_not_when_the_wait_began(r: Any) -> None:
    """A session's last use is the node's clock when the BLMOVE was sent plus how long it
    waited by Redis's clock (fast_clock.lua stamped when it began, with this take's mark)."""
    sid = f"s-{uuid.uuid4()}"
    clock = keys.fast_clock(NODE, "pool")
    r.hset(keys.session(sid), mapping={"worker": f"{NODE}/0", "node": NODE, "last_used": 1})
    seconds, micros = r.time()
    r.set(clock, f"7:{seconds * 1_000_000 + micros - 2_000_000}")
    _, raw = message(session_id=sid, worker=f"{NODE}/0")
    assert take(r, raw, [f"{NODE}/0"], now=1000.0)[0] == "ok"
    assert 1001.9 < float(r.hget(keys.session(sid), "last_used")) < 1010

    r.set(clock, f"6:{seconds * 1_000_000 + micros - 2_000_000}")  # another take's stamp
    _, raw = message(session_id=sid, worker=f"{NODE}/0")
    assert take(r, raw, [f"{NODE}/0"], now=1000.0)[0] == "ok"
    assert float(r.hget(keys.session(sid), "last_used")) == 1000.0

    lua.script(r, "fast_clock")(keys=[clock], args=["8"])
    mark, _, stamp = connections.text(r.get(clock)).partition(":")
    seconds, micros = r.time()
    assert mark == "8" and abs(int(stamp) - (seconds * 1_000_000 + micros)) < 5e6
    r.delete(keys.session(sid))
    r.zrem(keys.sessions(), sid)


def test_a_message_left_in_the_landing_list_goes_on_with_the_next_take(r: Any) -> None:
    landing = keys.fast_landing(NODE, "pool")
    _, left = message()
    _, raw = message()
    r.lpush(landing, left)
    assert take(r, raw, [f"{NODE}/0"])[1] == left  # oldest first
    assert take(r, None, [f"{NODE}/0"])[1] == raw
    assert r.lrange(keys.fast_processing(NODE), 0, -1) == [raw, left]
