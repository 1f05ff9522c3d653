"""The circuit breaker's states, and the guard that feeds it."""

from __future__ import annotations

import asyncio

import pytest

from surge.protect.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, Guard, Unavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _breaker(threshold: int = 3) -> tuple[Breaker, Clock]:
    breaker, clock = Breaker("db", threshold=threshold, cool_down=1.0, max_cool_down=4.0), Clock()
    breaker._now = clock
    return breaker, clock


def test_opens_after_threshold_failures_in_a_row() -> None:
    breaker, _ = _breaker()
    for _ in range(2):
        breaker.check()
        breaker.failed()
    breaker.check()
    breaker.succeeded()  # a success resets the count
    for _ in range(2):
        breaker.check()
        breaker.failed()
    assert breaker.state == CLOSED
    breaker.check()
    breaker.failed()
    assert breaker.state == OPEN and breaker.opened == 1
    with pytest.raises(Unavailable, match="db is unavailable"):
        breaker.check()


def test_half_open_lets_one_probe_through_and_backs_off() -> None:
    breaker, clock = _breaker(threshold=1)
    breaker.check()
    breaker.failed()
    clock.now += 1.0  # cool-down over: one probe
    breaker.check()
    assert breaker.state == HALF_OPEN
    with pytest.raises(Unavailable):
        breaker.check()  # a second caller while the probe is out
    breaker.failed()  # the probe failed: open for twice as long
    assert breaker.state == OPEN
    clock.now += 1.5
    with pytest.raises(Unavailable):
        breaker.check()
    clock.now += 0.5
    breaker.check()
    breaker.failed()
    clock.now += 4.0  # capped at max_cool_down
    breaker.check()
    breaker.succeeded()
    assert breaker.state == CLOSED
    breaker.check()  # and the cool-down is back to its start
    breaker.failed()
    clock.now += 1.0
    breaker.check()


def test_a_probe_without_verdict_frees_the_next() -> None:
    breaker, clock = _breaker(threshold=1)
    breaker.check()
    breaker.failed()
    clock.now += 1.0
    breaker.check()
    breaker.released()  # cancelled by its caller's deadline
    breaker.check()  # another probe may go
    assert breaker.state == HALF_OPEN


async def _through(guard: Guard, error: BaseException | None) -> None:
    async with guard:
        if error is not None:
            raise error


def test_the_guard_tells_down_from_answered() -> None:
    breaker, _ = _breaker(threshold=2)
    guard = Guard(breaker, (ConnectionError, TimeoutError))

    def run(error: BaseException | None) -> None:
        try:
            asyncio.run(_through(guard, error))
        except BaseException:
            pass

    run(ConnectionRefusedError())
    run(ValueError("constraint violated"))  # the dependency answered: resets the count
    run(TimeoutError())
    assert breaker.state == CLOSED
    run(ConnectionResetError())
    assert breaker.state == OPEN
    with pytest.raises(Unavailable):
        asyncio.run(_through(guard, None))
    assert breaker.opened == 1  # refusals by the open breaker are not failures
