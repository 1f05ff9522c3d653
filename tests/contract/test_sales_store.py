"""The purchase transaction on every database: batches and single commits agree."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from surge import db
from surge.backends.sql import create_engine
from surge.backends.sql_sales import Purchase, SqlSales, Win
from surge.sales import NewSale
from tests.backends import Backend

pytestmark = pytest.mark.anyio


async def _sales(backend: Backend) -> tuple[SqlSales, object]:
    await asyncio.to_thread(db.migrate, backend.database_url)
    engine = create_engine(backend.database_url, pool_size=4)
    return SqlSales(engine), engine


def _new(stock: int, limit: int = 1) -> NewSale:
    now = datetime.now(UTC).replace(microsecond=0)
    return NewSale("t", stock, limit, now - timedelta(minutes=1), now + timedelta(hours=1))


async def test_a_batch_commits_together_with_exact_outcomes(backend: Backend) -> None:
    sales, engine = await _sales(backend)
    try:
        now = datetime.now(UTC)
        sale = await sales.create_sale(_new(stock=6), now)
        wins = [Win(f"u{i}", 1, f"k{i}", "h") for i in range(5)]
        first = await sales.purchase_many(sale, wins, now)
        assert all(isinstance(p, Purchase) and p.outcome == "committed" for p in first)
        ids = {p.order.id for p in first if isinstance(p, Purchase) and p.order}
        assert len(ids) == 5
        stored = {o.id: o.user_id for o in await sales.sale_orders(sale.id)}
        assert stored == {
            p.order.id: p.order.user_id for p in first if isinstance(p, Purchase) and p.order
        }
        # a repeat buyer and more buyers than stock: the batch falls back, each gets its own
        again = [Win("u0", 1, "again", "h"), Win("v1", 1, "k", "h"), Win("v2", 1, "k", "h")]
        second = await sales.purchase_many(sale, again, now)
        outcomes = [p.outcome for p in second if isinstance(p, Purchase)]
        assert outcomes == ["limit", "committed", "sold_out"]
        fresh = await sales.get_sale(sale.id)
        assert fresh is not None and fresh.remaining == 0
        assert len(await sales.sale_orders(sale.id)) == 6
        # the same key again: the first order, not a second one
        replay = await sales.purchase_many(sale, [Win("u1", 1, "k1", "h")], now)
        assert isinstance(replay[0], Purchase) and replay[0].outcome == "duplicate"
    finally:
        await engine.dispose()  # type: ignore[attr-defined]


async def test_connections_come_back_without_an_open_transaction(backend: Backend) -> None:
    """The pool's ROLLBACK on check-in is skipped after a commit (MySQL); any other use
    must still end its implicit transaction, and MySQL runs at READ COMMITTED."""
    if backend.kind != "mariadb+redis":
        pytest.skip("the check-in shortcut and the isolation level are MySQL's")
    await asyncio.to_thread(db.migrate, backend.database_url)
    engine = create_engine(backend.database_url, pool_size=1)  # one connection, reused
    sales = SqlSales(engine)

    async def state() -> tuple[int, str]:
        async with engine.connect() as conn:
            row = (await conn.execute(sa.text("SELECT @@in_transaction, @@tx_isolation"))).one()
        return int(row[0]), str(row[1])

    try:
        now = datetime.now(UTC)
        sale = await sales.create_sale(_new(stock=5), now)
        await sales.purchase_many(sale, [Win("a", 1, "k", "h"), Win("b", 1, "k", "h")], now)
        assert await state() == (0, "READ-COMMITTED")
        await sales.purchase(sale, "c", 1, "k", "h", now)  # a single commit
        assert await state() == (0, "READ-COMMITTED")
        assert len(await sales.sale_orders(sale.id)) == 3  # a read of InnoDB rows
        assert await state() == (0, "READ-COMMITTED")
        with pytest.raises(RuntimeError):
            async with engine.connect() as conn:  # abandoned mid-transaction
                await conn.execute(sa.text("SELECT COUNT(*) FROM orders"))
                raise RuntimeError
        assert await state() == (0, "READ-COMMITTED")
    finally:
        await engine.dispose()
