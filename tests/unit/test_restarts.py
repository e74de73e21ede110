"""snakepit_tasks.node.restarts: the restart-intensity rule, on a fake clock."""

from __future__ import annotations

from snakepit_tasks.node.restarts import RestartLimit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_more_than_max_restarts_within_max_seconds_pauses_the_next() -> None:
    clock = Clock()
    limit = RestartLimit(3, 5, clock=clock)
    assert [limit.pause_before("w/0") for _ in range(4)] == [0.0] * 4
    assert limit.pause_before("w/0") == 5  # a 5th restart within 5 s waits 5 s
    clock.now += 5
    assert limit.pause_before("w/0") == 0.0  # then it starts over: never given up
    assert [limit.pause_before("w/0") for _ in range(3)] == [0.0] * 3
    assert limit.pause_before("w/0") == 5


def test_restarts_spread_out_never_pause() -> None:
    clock = Clock()
    limit = RestartLimit(1, 5, clock=clock)
    for _ in range(10):
        assert limit.pause_before("w/0") == 0.0
        clock.now += 3  # at most 2 restarts in any 5 s window


def test_workers_are_counted_apart() -> None:
    limit = RestartLimit(0, 5, clock=Clock())
    assert limit.pause_before("w/0") == 0.0
    assert limit.pause_before("w/1") == 0.0
    assert limit.pause_before("w/0") == 5
