"""A dependency's failure answers 503 without Core importing its driver."""

from __future__ import annotations

import pytest

from surge.ground import errors
from surge.ground.web import Problem
from surge.protect.deadlines import within

pytestmark = pytest.mark.anyio


class DriverError(Exception):
    """Stands for a driver's base exception (redis.RedisError, SQLAlchemyError)."""


async def fail(exc: BaseException) -> None:
    raise exc


async def test_a_registered_driver_error_answers_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errors, "_UNAVAILABLE", errors.unavailable_errors())
    with pytest.raises(DriverError):  # not registered yet: a bug, not an outage
        await within(1.0, fail(DriverError("x")))
    errors.count_as_unavailable(DriverError)
    errors.count_as_unavailable(DriverError)  # twice: kept once
    assert errors.unavailable_errors().count(DriverError) == 1
    with pytest.raises(Problem) as caught:
        await within(1.0, fail(DriverError("connection lost")))
    assert caught.value.status == 503 and caught.value.kind == "unavailable"


async def test_an_open_breaker_and_os_errors_answer_503() -> None:
    for exc in (errors.Unavailable("redis is unavailable"), ConnectionResetError()):
        with pytest.raises(Problem) as caught:
            await within(1.0, fail(exc))
        assert caught.value.status == 503


def test_the_real_drivers_register_themselves() -> None:
    import redis.exceptions
    import sqlalchemy.exc

    import surge.backends.redis
    import surge.backends.sql  # noqa: F401

    kinds = errors.unavailable_errors()
    assert redis.exceptions.RedisError in kinds and sqlalchemy.exc.SQLAlchemyError in kinds
