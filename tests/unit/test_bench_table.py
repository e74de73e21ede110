"""The benchmark's pure pieces: the one table (ratios, targets, verdicts), the per-call profile
view, the bidi stream's reply framing. The benchmark itself runs with ``make bench``."""

from __future__ import annotations

import cProfile
import pstats
import sys
from pathlib import Path

from snakepit_tasks._proto import bridge_pb2 as pb

# bench/ is not an installed package: it runs from the repository root (python -m bench...).
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import grpc_mux, profile_view, ray_actor, table  # noqa: E402


def _rt(median: float, p99: float, cmds: float | None = None) -> dict[str, object]:
    row: dict[str, object] = {"label": "x", "median_ms": median, "p99_ms": p99}
    if cmds is not None:
        row["redis_commands_per_call"] = cmds
    return row


def _results() -> dict[str, object]:
    return {
        "quick": True,
        "machine": {"nproc": 2, "cpu_model": "cpu", "platform": "linux", "python": "3.11",
                    "packages": {"celery": "5"}, "redis_server": "7", "commit": "abc",
                    "date": "2026-12-02T00:00", "loadavg_start": [1.0], "loadavg_end": [2.0]},
        "round_trip": {
            "raw_celery": _rt(4.0, 8.0, 18.0),
            "snakepit": _rt(1.6, 4.0, 12.0),
            "snakepit_celery": _rt(5.0, 9.0, 30.0),
            "snakepit_session": _rt(2.0, 5.0),
            "snakepit_async": _rt(6.0, 10.0),
            "mux_unary": _rt(0.5, 1.0),
            "mux_bidi": _rt(0.45, 0.9),
            "grpc_execute": _rt(0.6, 1.2),
            "call_socket": _rt(0.42, 0.9),
        },
        "ray": {"status": "ray not installed"},
        "throughput": {"snakepit": {"calls": 2000, "calls_per_s": 360.0},
                       "raw_celery": {"calls": 2000, "calls_per_s": 400.0}},
        "concurrent": {"raw_celery": {"callers": 8, "calls_per_s": 400.0},
                       "snakepit": {"callers": 8, "calls_per_s": 700.0},
                       "snakepit_celery": {"callers": 8, "calls_per_s": 380.0}},
        "startup": {"nodes": {"8": {"ready_ms": 900.0}, "32": {"ready_ms": 4500.0}}},
        "scale": {"workers": 100, "ready_ms": 20000.0, "stop_ms": 4000.0, "orphans": 0,
                  "runtime_pids": 100},
    }


def _row(rows: list[table.Row], start: str) -> table.Row:
    return next(r for r in rows if r.measure.startswith(start))


def test_each_target_is_judged_from_its_ratio() -> None:
    rows = table.rows(_results())
    assert _row(rows, "sync `execute").verdict == "met"  # 0.4× ≤ 0.5×
    assert _row(rows, "sync `execute").ratio == "0.40× / 0.50×"
    assert _row(rows, "`execute_async").verdict == "missed"  # 1.5× > 1.2×
    assert _row(rows, "throughput, 2,000").verdict == "met"  # 0.9× ≥ 0.9×
    assert _row(rows, "throughput, 8 concurrent sync callers, fast lane").verdict == "missed"
    assert _row(rows, "throughput, 8 concurrent sync callers, Celery lane").verdict == "met"
    assert _row(rows, "start-up, 8 workers").verdict == "met"
    assert _row(rows, "start-up, 32 workers").verdict == "missed"
    assert _row(rows, "start-up, 2 workers").verdict == ""  # no target
    assert _row(rows, "100 workers").verdict == "met"
    assert _row(rows, "stream chunks/s").verdict == "not measured"
    assert "keep unary" in _row(rows, "node↔runtime").verdict  # 10% faster only
    production = _row(rows, "node↔runtime in production")
    assert production.ratio.startswith("0.70×") and "saves 30%" in production.verdict


def test_a_missing_ray_says_so_in_its_row() -> None:
    row = _row(table.rows(_results()), "session call vs a Ray actor")
    assert row.reference == "ray not installed" and row.verdict == "ray not installed"
    assert ray_actor.available() in (True, False)


def test_the_markdown_table_has_every_row_and_the_machine_line() -> None:
    results = _results()
    text = table.markdown(results)
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + len(table.rows(results))
    assert all(line.count("|") == 7 for line in lines)
    assert "2 CPU(s)" in text and "--quick" in text
    assert table.counts(results) == {"met": 5, "missed": 3, "targets": 10}


def test_the_profile_view_divides_by_calls_and_drops_idle_waits() -> None:
    def work() -> int:
        return sum(range(1000))

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(10):
        work()
    profiler.disable()
    rows = profile_view.per_call(pstats.Stats(profiler), 10, r"work")
    assert [r["function"].rsplit("(", 1)[1] for r in rows] == ["work)"]
    assert rows[0]["per_call"] == 1.0 and rows[0]["cum_us"] > 0
    assert profile_view.per_call(pstats.Stats(profiler), 10, r"work", max_us=0.0) == []
    assert "work" in profile_view.text(rows)


def test_bidi_replies_carry_their_call_id() -> None:
    response = pb.ExecuteResponse(ok=True, duration_us=7)
    call_id, back = grpc_mux._unframe(grpc_mux._frame(("m42", response)))
    assert call_id == "m42" and back == response
