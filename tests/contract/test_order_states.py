"""An order's life after its purchase (issue 19) on every database: pay, cancel, expire,
each exactly once however calls race, and the units of a cancelled or expired order back
on sale and off the buyer's count, in the same transaction."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from surge import db
from surge.backends.sql import create_engine
from surge.backends.sql_order_states import SqlOrderStates
from surge.backends.sql_sales import SqlSales
from surge.ground.orders import RETURNED, Order
from surge.ground.purchases import Purchase, Win
from surge.ground.sales import NewSale, Sale
from surge.schema import orders, outbox, sale_buyers
from tests.backends import make_backend

pytestmark = pytest.mark.anyio

WINDOW = 60.0  # seconds to pay


class Stores:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.sales = SqlSales(engine, pay_window=WINDOW)
        self.states = SqlOrderStates(engine)

    async def sale(self, stock: int, limit: int = 1) -> Sale:
        now = datetime.now(UTC).replace(microsecond=0)
        new = NewSale("t", stock, limit, now - timedelta(minutes=1), now + timedelta(hours=1))
        return await self.sales.create_sale(new, now)

    async def buy(
        self, sale: Sale, user: str, quantity: int = 1, now: datetime | None = None
    ) -> Order:
        done = await self.sales.purchase(
            sale, user, quantity, f"k-{user}", "fp", now or datetime.now(UTC)
        )
        assert done.outcome == "committed" and done.order is not None, done
        return done.order

    async def remaining(self, sale: Sale) -> int:
        fresh = await self.sales.get_sale(sale.id)
        assert fresh is not None
        return fresh.remaining

    async def check_stock(self, sale: Sale) -> None:
        """remaining = stock - units of pending and paid orders; each buyer's count too."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(orders.c.user_id, orders.c.quantity, orders.c.status).where(
                        orders.c.sale_id == sale.id
                    )
                )
            ).all()
            counted = dict(
                (
                    await conn.execute(
                        sa.select(sale_buyers.c.user_id, sale_buyers.c.bought).where(
                            sale_buyers.c.sale_id == sale.id
                        )
                    )
                ).all()
            )
        held: dict[str, int] = {}
        for user, quantity, status in rows:
            if status not in RETURNED:
                held[user] = held.get(user, 0) + quantity
        assert await self.remaining(sale) == sale.stock - sum(held.values())
        assert {u: c for u, c in counted.items() if c} == held

    async def events(self, topic: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(sa.select(outbox.c.payload).where(outbox.c.topic == topic))
            ).all()
        return [json.loads(row[0]) for row in rows]


@pytest.fixture(params=("embedded", "mariadb+redis", "postgresql+redis"))
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with make_backend(request.param, tmp_path) as made:
        yield made.database_url


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[Stores]:
    await asyncio.to_thread(db.migrate, database_url)
    engine = create_engine(database_url, pool_size=8)
    try:
        yield Stores(engine)
    finally:
        await engine.dispose()


async def test_a_purchase_is_pending_until_paid_once(stores: Stores) -> None:
    sale = await stores.sale(stock=2)
    now = datetime.now(UTC)
    order = await stores.buy(sale, "u", now=now)
    assert order.status == "pending"
    state = await stores.states.get(order.id)
    assert state is not None and state.pay_by is not None
    assert state.pay_by - order.created_at == timedelta(seconds=WINDOW)

    assert (await stores.states.pay(order.id, "someone-else", "p1", "ref", now)).changed is False
    paid = await stores.states.pay(order.id, "u", "p1", "ref-1", now)
    assert paid.changed and paid.state is not None
    assert (paid.state.order.status, paid.state.pay_key, paid.state.payment_ref) == (
        "paid",
        "p1",
        "ref-1",
    )
    again = await stores.states.pay(order.id, "u", "p2", "ref-2", now)
    assert not again.changed and again.state is not None
    assert (again.state.order.status, again.state.pay_key) == ("paid", "p1")  # unchanged
    assert await stores.events("order.paid") == [
        {
            "order_id": order.id,
            "sale_id": sale.id,
            "user_id": "u",
            "quantity": 1,
            "payment_ref": "ref-1",
        }
    ]
    # paid: its owner cannot cancel it any more, an admin can, and the unit comes back
    assert not (await stores.states.cancel(order.id, "u", now)).changed
    assert await stores.remaining(sale) == 1
    cancelled = await stores.states.cancel(order.id, None, now)
    assert cancelled.changed and cancelled.state and cancelled.state.order.status == "cancelled"
    assert await stores.remaining(sale) == 2
    await stores.check_stock(sale)
    assert (await stores.states.pay(404_404, "u", "k", "r", now)).state is None


async def test_cancel_and_expiry_give_units_back_once(stores: Stores) -> None:
    sale = await stores.sale(stock=3, limit=2)
    now = datetime.now(UTC)
    mine = await stores.buy(sale, "u", quantity=2, now=now)
    other = await stores.buy(sale, "v", now=now)
    assert await stores.remaining(sale) == 0
    assert not (await stores.states.cancel(mine.id, "v", now)).changed  # not v's
    assert (await stores.states.cancel(mine.id, "u", now)).changed
    assert not (await stores.states.cancel(mine.id, "u", now)).changed  # once
    assert await stores.remaining(sale) == 2
    # the buyer's limit is free again: the database lets u buy 2 more
    again = await stores.sales.purchase(sale, "u", 2, "k-again", "fp", now)
    assert again.order is not None
    await stores.check_stock(sale)

    later = now + timedelta(seconds=WINDOW)
    assert await stores.states.expire_due(later - timedelta(seconds=1), 10) == []  # none due
    assert not (await stores.states.expire(other.id, later - timedelta(seconds=1))).changed
    assert (await stores.states.expire(other.id, later)).changed
    assert not (await stores.states.expire(other.id, later)).changed
    assert not (await stores.states.pay(other.id, "v", "p", "r", later)).changed  # too late
    # the sweep takes what is still due: not the cancelled order, not the expired one
    swept = await stores.states.expire_due(later, 10)
    assert [s.order.id for s in swept] == [again.order.id]
    assert [e["order_id"] for e in await stores.events("order.expired")] == [
        other.id,
        again.order.id,
    ]
    assert [e["order_id"] for e in await stores.events("order.cancelled")] == [mine.id]
    await stores.check_stock(sale)


async def test_racing_calls_move_an_order_once(stores: Stores) -> None:
    """Payments racing the expiry at the deadline, cancellations racing both: each
    order ends in exactly one state, and its units come back at most once."""
    sale = await stores.sale(stock=12)
    start = datetime.now(UTC).replace(microsecond=0)
    bought = [await stores.buy(sale, f"u{n}", now=start) for n in range(12)]
    deadline = start + timedelta(seconds=WINDOW)
    just_before = deadline - timedelta(seconds=1)

    async def race(order: Order) -> list[bool]:
        calls = [
            stores.states.pay(order.id, order.user_id, "p", "ref", just_before),
            stores.states.expire(order.id, deadline),
            stores.states.expire(order.id, deadline),
            stores.states.cancel(order.id, order.user_id, just_before),
            stores.states.cancel(order.id, None, deadline),
        ]
        return [t.changed for t in await asyncio.gather(*calls)]

    results = await asyncio.gather(*(race(order) for order in bought))
    assert all(sum(changed) in (1, 2) for changed in results), results
    for order, changed in zip(bought, results, strict=True):
        state = await stores.states.get(order.id)
        assert state is not None
        if changed[0]:  # paid first: then only the admin's cancel could move it again
            assert sum(changed) == 1 or (changed[4] and state.order.status == "cancelled")
        else:
            assert sum(changed) == 1 and state.order.status in RETURNED
    await stores.check_stock(sale)
    returned = await stores.events("order.expired") + await stores.events("order.cancelled")
    assert len(returned) == len({e["order_id"] for e in returned})  # each once


async def test_returned_units_sell_again(stores: Stores) -> None:
    sale = await stores.sale(stock=2)
    now = datetime.now(UTC)
    first = [await stores.buy(sale, f"a{n}", now=now) for n in range(2)]
    refused = await stores.sales.purchase(sale, "late", 1, "k", "fp", now)
    assert refused.outcome == "sold_out"
    await stores.states.expire(first[0].id, now + timedelta(seconds=WINDOW))
    again: list[Purchase | Exception] = await stores.sales.purchase_many(
        sale, [Win("late", 1, "k2", "fp"), Win("later", 1, "k3", "fp")], now
    )
    outcomes = sorted(p.outcome for p in again if isinstance(p, Purchase))
    assert outcomes == ["committed", "sold_out"]
    await stores.check_stock(sale)


async def test_sweeps_at_once_expire_each_order_once(stores: Stores) -> None:
    """The sweep's batch (one transaction): two processes sweeping together take
    different orders (SKIP LOCKED), and every due order expires exactly once."""
    sale = await stores.sale(stock=40)
    start = datetime.now(UTC).replace(microsecond=0)
    bought = [await stores.buy(sale, f"u{n}", now=start) for n in range(40)]
    paid = bought[0]
    await stores.states.pay(paid.id, paid.user_id, "p", "r", start)
    later = start + timedelta(seconds=WINDOW)
    assert await stores.states.expire_due(later - timedelta(seconds=1), 10) == []
    other = SqlOrderStates(create_engine_like(stores))
    try:
        expired: list[int] = []
        while True:
            rounds = await asyncio.gather(
                stores.states.expire_due(later, 15), other.expire_due(later, 15)
            )
            got = [state.order.id for batch in rounds for state in batch]
            if not got:
                break
            expired += got
            assert all(s.order.status == "expired" for batch in rounds for s in batch)
    finally:
        await other.engine.dispose()
    assert sorted(expired) == sorted(o.id for o in bought[1:])  # each once, the paid one not
    assert len(await stores.events("order.expired")) == 39
    assert await stores.remaining(sale) == 39
    await stores.check_stock(sale)


def create_engine_like(stores: Stores) -> Any:
    """A second process's engine on the same database."""
    return create_engine(stores.engine.url.render_as_string(hide_password=False), pool_size=2)
