"""The order query's reads on the driver's pool (surge.backends.sql_reads) answer exactly as
SQLAlchemy does, on every backend kind, and survive a query cut short."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime

import pytest
import sqlalchemy as sa

from surge import db
from surge.backends.sql import SqlStore, create_engine, database_down
from surge.schema import orders
from tests.backends import Backend

pytestmark = pytest.mark.anyio

ODD_USER = "ünï-😀-\\'\""  # non-ASCII, outside the BMP, and quoting characters


@contextlib.asynccontextmanager
async def _store(backend: Backend) -> AsyncIterator[SqlStore]:
    store = SqlStore(create_engine(backend.database_url, 3), 3)
    try:
        yield store
    finally:
        await store.close()


async def _seeded(backend: Backend) -> int:
    """Seeds 40 orders and adds one for ODD_USER; returns its id."""
    await asyncio.to_thread(db.migrate, backend.database_url)
    await db.seed(backend.database_url, 40, users=5, reset=True)
    async with _store(backend) as store, store.engine.begin() as conn:
        inserted = await conn.execute(
            sa.insert(orders).values(
                sale_id=1,
                user_id=ODD_USER,
                quantity=2,
                status="confirmed",
                created_at=datetime(2026, 12, 3, 18, 30, 5),
            )
        )
        return int(inserted.inserted_primary_key[0])


async def test_the_driver_pool_answers_as_sqlalchemy_does(backend: Backend) -> None:
    odd = await _seeded(backend)
    ids = [1, 2, 17, 40, odd, odd + 1, 10**12]
    async with _store(backend) as store:
        uses_driver = store._reads is not None
        assert uses_driver == (not backend.database_url.startswith("sqlite"))
        fast = await store.get_orders(ids)
        reads, store._reads = store._reads, None  # the same store, through SQLAlchemy
        slow = await store.get_orders(ids)
        store._reads = reads  # closed with the store
    assert fast == slow
    assert sorted(fast) == [1, 2, 17, 40, odd]
    assert fast[odd].user_id == ODD_USER
    assert fast[odd].created_at.isoformat() == "2026-12-03T18:30:05+00:00"
    assert all(type(order.id) is int and type(order.quantity) is int for order in fast.values())


async def test_a_read_cut_short_does_not_poison_the_pool(backend: Backend) -> None:
    """On SQLite the reads stay on SQLAlchemy's pool, which must survive the same."""
    await _seeded(backend)
    async with _store(backend) as store:
        await store.warm()
        many = list(range(1, 41)) * 200  # a long IN list: still in flight when cut
        for _ in range(6):  # more cuts than the pool has connections
            task = asyncio.ensure_future(store.get_orders(many))
            await asyncio.sleep(0)
            await asyncio.sleep(0.0005)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        answers = await asyncio.gather(*(store.get_orders([1, 2, 3]) for _ in range(10)))
        assert all(sorted(found) == [1, 2, 3] for found in answers)
        assert store.in_use == 0


async def test_no_ids_no_query(backend: Backend) -> None:
    await _seeded(backend)
    async with _store(backend) as store:
        assert await store.get_orders([]) == {}  # MySQL refuses `IN ()`


class _ThirdFails:
    """A driver pool whose third acquire fails (too many connections)."""

    def __init__(self, pool: object) -> None:
        self.pool = pool
        self.taken = 0

    async def acquire(self) -> object:
        self.taken += 1
        if self.taken == 3:
            raise ConnectionError("too many connections")
        return await self.pool.acquire()  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.pool, name)


async def test_a_warm_that_fails_midway_gives_back_what_it_took(backend: Backend) -> None:
    """The third connection cannot be had: the two taken go back to the pool (they used to
    stay checked out, and the pool's close then waited for them forever)."""
    await _seeded(backend)
    async with _store(backend) as store:
        reads = store._reads
        if reads is None:
            assert backend.database_url.startswith("sqlite")
            return
        pool = await reads._open()
        failing = reads._pool = _ThirdFails(pool)
        with pytest.raises(ConnectionError):
            await store.warm()
        reads._pool = pool
        assert failing.taken == 3 and reads.in_use == 0
        assert sorted(await store.get_orders([1, 2])) == [1, 2]


def test_urls_with_options_stay_on_sqlalchemy() -> None:
    from sqlalchemy.engine import make_url

    from surge.backends.breaker import Breaker, Guard
    from surge.backends.sql_reads import order_reads

    guard = Guard(Breaker("test"), database_down)
    for url, fast in (
        ("mysql+asyncmy://root@127.0.0.1/test", True),
        ("postgresql+asyncpg://postgres@127.0.0.1/test", True),
        ("mysql+asyncmy://root@127.0.0.1/test?ssl_ca=/ca.pem", False),
        ("postgresql+asyncpg://postgres@127.0.0.1/test?ssl=require", False),
        ("sqlite+aiosqlite:///x.db", False),
    ):
        assert (order_reads(make_url(url), 2, guard, 1.0, 1.0) is not None) == fast, url


async def test_driver_errors_that_mean_the_database_is_gone_open_the_breaker() -> None:
    import asyncmy.errors
    import asyncpg

    assert database_down(asyncmy.errors.OperationalError(2013, "Lost connection"))
    assert database_down(asyncmy.errors.OperationalError(1927, "Connection was killed"))
    assert database_down(asyncmy.errors.InterfaceError(0, "Not connected"))
    assert database_down(asyncpg.exceptions.InterfaceError("connection is closed"))
    assert database_down(asyncpg.exceptions.ConnectionDoesNotExistError("closed"))
    assert database_down(asyncpg.exceptions.CannotConnectNowError("starting up"))
    assert not database_down(asyncmy.errors.ProgrammingError(1064, "syntax"))
    assert not database_down(asyncpg.exceptions.UniqueViolationError("duplicate"))
