"""The purchase transaction on every database: batches and single commits agree."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from surge import db
from surge.backends.sql import create_engine
from surge.backends.sql_batch import NewOrders, Refused, commit_batch
from surge.backends.sql_sales import SqlSales
from surge.ground.purchases import Purchase, Win
from surge.ground.sales import NewSale
from surge.schema import orders, outbox, sale_buyers, sales
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


@pytest.mark.parametrize("backend", ["mariadb+redis"], indirect=True)  # MySQL's own settings
async def test_connections_come_back_without_an_open_transaction(backend: Backend) -> None:
    """The pool's ROLLBACK on check-in is skipped after a commit (MySQL); any other use
    must still end its implicit transaction, and MySQL runs at READ COMMITTED."""
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


async def _counts(engine: Any, sale_id: int) -> tuple[int, int, int, int]:
    async with engine.connect() as conn:
        remaining = (
            await conn.execute(sa.select(sales.c.remaining).where(sales.c.id == sale_id))
        ).scalar_one()
        bought = (
            await conn.execute(sa.select(sa.func.count()).where(sale_buyers.c.sale_id == sale_id))
        ).scalar_one()
        placed = (
            await conn.execute(sa.select(sa.func.count()).where(orders.c.sale_id == sale_id))
        ).scalar_one()
        payloads = (await conn.execute(sa.select(outbox.c.payload))).scalars().all()
    mine = [json.loads(p) for p in payloads if json.loads(p)["sale_id"] == sale_id]
    return int(remaining), int(bought), int(placed), len(mine)


async def test_one_round_trip_batch_all_or_nothing(backend: Backend) -> None:
    sales_store, engine = await _sales(backend)
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        sale = await sales_store.create_sale(_new(stock=4, limit=2), now)
        # pending, to be paid within a minute (issue 19)
        naive = NewOrders(
            now.replace(tzinfo=None), "pending", now.replace(tzinfo=None) + timedelta(minutes=1)
        )
        wins = [Win("a", 2, "k", "h1"), Win("b", 1, "k", "h2")]
        ids = await commit_batch(engine, sale.id, wins, naive)  # type: ignore[arg-type]
        assert set(ids) == {"a", "b"}
        stored = await sales_store.sale_orders(sale.id)
        assert {(o.id, o.user_id, o.quantity) for o in stored} == {
            (ids["a"], "a", 2),
            (ids["b"], "b", 1),
        }
        async with engine.connect() as conn:  # type: ignore[attr-defined]
            kept = (
                await conn.execute(
                    sa.select(orders.c.status, orders.c.pay_by).where(orders.c.sale_id == sale.id)
                )
            ).all()
        assert [tuple(row) for row in kept] == [("pending", naive.pay_by)] * 2
        assert await _counts(engine, sale.id) == (1, 2, 2, 2)
        async with engine.connect() as conn:  # type: ignore[attr-defined]
            events = [
                json.loads(p) for p in (await conn.execute(sa.select(outbox.c.payload))).scalars()
            ]
        assert {"order_id": ids["a"], "sale_id": sale.id, "user_id": "a", "quantity": 2} in events
        found = await sales_store.order_by_key("b", "k")
        assert found is not None and found[1] == "h2"
        # refused, and nothing of the batch stays: a repeat buyer; then too little stock
        for refused in (
            [Win("c", 1, "k", "h"), Win("a", 1, "k2", "h")],
            [Win("d", 1, "k", "h"), Win("e", 1, "k", "h")],
        ):
            with pytest.raises(Refused):
                await commit_batch(engine, sale.id, refused, naive)  # type: ignore[arg-type]
            assert await _counts(engine, sale.id) == (1, 2, 2, 2)
        last = await commit_batch(engine, sale.id, [Win("d", 1, "k", "h")], naive)  # type: ignore[arg-type]
        assert list(last) == ["d"] and last["d"] > max(ids.values())
        assert await _counts(engine, sale.id) == (0, 3, 3, 3)
    finally:
        await engine.dispose()  # type: ignore[attr-defined]
