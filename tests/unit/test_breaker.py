"""The circuit breaker's states, and the guard that feeds it."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from redis.exceptions import (
    ClusterDownError,
    MaxConnectionsError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from surge.backends.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, Guard
from surge.backends.redis import redis_down
from surge.backends.sql import database_down
from surge.ground.errors import Unavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _breaker(threshold: int = 3) -> tuple[Breaker, Clock]:
    breaker, clock = Breaker("db", threshold=threshold, cool_down=1.0, max_cool_down=4.0), Clock()
    breaker._now = clock
    return breaker, clock


def _trip(breaker: Breaker) -> None:
    while breaker.state == CLOSED:
        assert breaker.check() is False
        breaker.failed()


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


def test_half_open_lets_one_probe_through_and_backs_off_up_to_the_cap() -> None:
    breaker, clock = _breaker(threshold=1)
    _trip(breaker)
    clock.now += 1.0  # cool-down over: one probe
    assert breaker.check() is True and breaker.state == HALF_OPEN
    with pytest.raises(Unavailable):
        breaker.check()  # a second caller while the probe is out
    breaker.failed(probe=True)  # the probe failed: open for twice as long (2 s)
    for wait, cool_down in ((1.9, 2.0), (3.9, 4.0), (3.9, 4.0)):  # 2, 4, then capped at 4
        clock.now += wait
        with pytest.raises(Unavailable):
            breaker.check()
        clock.now += cool_down - wait
        assert breaker.check() is True
        breaker.failed(probe=True)
    clock.now += 4.0
    assert breaker.check() is True
    breaker.succeeded(probe=True)
    assert breaker.state == CLOSED
    _trip(breaker)  # and the cool-down is back to its start
    clock.now += 1.0
    assert breaker.check() is True


def test_only_the_probe_moves_a_breaker_that_is_not_closed() -> None:
    breaker, clock = _breaker(threshold=1)
    _trip(breaker)
    breaker.succeeded()  # a call that began before the breaker opened: proves nothing
    assert breaker.state == OPEN
    clock.now += 1.0
    assert breaker.check() is True
    breaker.released()  # some other call gave up: the probe is still out
    with pytest.raises(Unavailable):
        breaker.check()
    breaker.released(probe=True)  # the probe itself was cancelled: another may go
    assert breaker.check() is True and breaker.state == HALF_OPEN


async def _through(guard: Guard, error: BaseException | None) -> None:
    async with guard():
        if error is not None:
            raise error


def test_the_guard_tells_down_from_answered() -> None:
    breaker, _ = _breaker(threshold=2)
    guard = Guard(breaker, lambda error: isinstance(error, ConnectionError | TimeoutError))

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


class _DriverError(Exception):
    def __init__(self, *args: object, sqlstate: str | None = None) -> None:
        super().__init__(*args)
        self.sqlstate = sqlstate


def _wrapped(orig: Exception) -> sa.exc.DBAPIError:
    return sa.exc.OperationalError("SELECT 1", {}, orig)


@pytest.mark.parametrize(
    ("error", "down"),
    [
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (_wrapped(_DriverError(2003, "Can't connect to MySQL server")), True),
        (_wrapped(_DriverError(2013, "Lost connection to MySQL server")), True),
        (_wrapped(_DriverError(1213, "Deadlock found")), False),  # it answered
        (_wrapped(_DriverError(1205, "Lock wait timeout exceeded")), False),
        (_wrapped(_DriverError("terminating connection", sqlstate="57P01")), True),
        (_wrapped(_DriverError("duplicate key", sqlstate="23505")), False),
        (ValueError("a bug"), False),
    ],
)
def test_database_errors_are_classified(error: BaseException, down: bool) -> None:
    assert database_down(error) is down


def test_redis_errors_are_classified() -> None:
    assert redis_down(RedisConnectionError("Connection refused"))
    assert not redis_down(RedisConnectionError("No connection available."))  # our own load
    assert redis_down(TimeoutError())
    # a Redis Cluster: a slot without a master is down; a full per-node pool is our load,
    # a MOVED or TRYAGAIN is the cluster answering
    assert redis_down(ClusterDownError("CLUSTERDOWN The cluster is down"))
    assert redis_down(SlotNotCoveredError("slot 12 is not covered"))
    assert not redis_down(MaxConnectionsError("Too many connections"))
    assert not redis_down(TryAgainError("TRYAGAIN"))
    assert redis_down(RedisClusterException("Redis Cluster cannot be connected. Please ..."))
    assert not redis_down(RedisClusterException("keys in request don't hash to the same slot"))
