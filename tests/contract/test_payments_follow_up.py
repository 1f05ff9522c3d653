"""What follows a transition in surge.sales.payments (found by the review of issue 19),
on SQLite with the in-process gate, bus and feed: the feed's state for an ended sale, a
follow-up no deadline cuts off, a late payment."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from surge import db
from surge.auth import Authenticator, mint
from surge.backends.memory import MemoryBus
from surge.backends.memory_gate import MemoryGate
from surge.backends.sql import create_engine
from surge.backends.sql_order_states import SqlOrderStates
from surge.backends.sql_sales import SqlSales
from surge.ground.purchases import Confirmed
from surge.ground.sales import NewSale, Sale
from surge.ground.web import Problem, Request
from surge.sales.cache import SaleConfigs, SoldOutBoard
from surge.sales.feed import StockFeed, UserEvents
from surge.sales.payments import OrderLifecycle
from surge.sales.restock import StockBack

pytestmark = pytest.mark.anyio
SECRET = "review19-secret-0123456789-0123456789-xx"


class Rooms:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def publish(self, room: str, data: bytes) -> int:
        self.sent.append((room, orjson.loads(data)))
        return len(self.sent)


class SlowGate(MemoryGate):
    """The in-process gate whose give_back can be made slow (Redis under load)."""

    give_back_delay = 0.0

    async def give_back(self, sale_id: int, order: Any) -> int:
        await asyncio.sleep(self.give_back_delay)
        return await super().give_back(sale_id, order)


class World:
    def __init__(self, engine: Any, deadline: float) -> None:
        self.engine = engine
        self.sales = SqlSales(engine, pay_window=60.0)
        self.states = SqlOrderStates(engine)
        self.gate = SlowGate()
        self.rooms = Rooms()
        self.feed = StockFeed(self.rooms, self.gate.remaining, interval=0.01)
        self.board = SoldOutBoard(MemoryBus(), self.gate)
        self.invalidated: list[int] = []

        async def invalidate(*ids: int, settle: bool = False) -> None:
            self.invalidated += ids

        self.lifecycle = OrderLifecycle(
            Authenticator(SECRET),
            self.states,
            self.gate,
            StockBack(SaleConfigs(self.sales), self.feed, self.board),
            invalidate,
            UserEvents(self.rooms),
            lambda route: deadline,
        )

    async def sale(self, stock: int, starts: datetime, ends: datetime) -> Sale:
        now = datetime.now(UTC).replace(microsecond=0)
        sale = await self.sales.create_sale(NewSale("t", stock, 1, starts, ends), now)
        state = await self.sales.gate_state(sale.id)
        assert state is not None
        await self.gate.reconcile(state, 10_000)
        return sale

    async def buy(self, sale: Sale, user: str, at: datetime) -> int:
        """A purchase as surge.sales.purchase makes it: gate, commit, confirm."""
        assert (await self.gate.reserve(sale.id, user, "k", 1, "fp")).outcome == "ok"
        done = await self.sales.purchase(sale, user, 1, "k", "fp", at)
        assert done.order is not None
        await self.gate.confirm(sale.id, [Confirmed(user, "k", "fp", done.order.id, 1)])
        return done.order.id

    def request(self, order_id: int, user: str, body: bytes = b"", **headers: str) -> Request:
        hs = {b"authorization": f"Bearer {mint(SECRET, user)}".encode()}
        hs.update({k.replace("_", "-").encode(): v.encode() for k, v in headers.items()})
        request = Request("POST", f"/orders/{order_id}/x", "", hs, body, "127.0.0.1", b"rid")
        request.params = {"id": str(order_id)}
        return request


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    url = f"sqlite:///{tmp_path / 'surge.db'}"
    await asyncio.to_thread(db.migrate, url)
    engine = create_engine(url, pool_size=4)
    try:
        yield World(engine, deadline=0.3)
    finally:
        await engine.dispose()


async def test_an_expiry_after_the_sale_ended_does_not_show_the_sale_live(world: World) -> None:
    """The default window (15 min) outlives many sales: orders bought in a sale's last
    minutes expire after its end. The feed must not announce the ended sale as live
    (the purchase path and the reconciliation use Sale.state: 'ended')."""
    now = datetime.now(UTC).replace(microsecond=0)
    sale = await world.sale(1, now - timedelta(minutes=30), now + timedelta(seconds=2))
    order_id = await world.buy(sale, "u", now)
    await asyncio.sleep(2.2)  # the sale ends
    done = await world.states.expire(order_id, now + timedelta(seconds=60))
    assert done.changed and done.state is not None
    await world.lifecycle.moved(done.state)  # what the sweep does
    await asyncio.sleep(0.05)  # the feed's flush
    updates = [data for room, data in world.rooms.sent if room == f"sale:{sale.id}"]
    assert updates, world.rooms.sent
    assert updates[-1]["state"] == "ended", updates


async def test_a_committed_cancel_cut_off_by_the_deadline_still_returns_the_gate_units(
    world: World,
) -> None:
    """The cancel commits, then the route's deadline cancels what follows (give_back to
    a slow Redis): the client gets 504, its retry 200 (cancelled already), and nobody
    ever gives the unit back to the gate, tells the boards, or invalidates the caches
    (the reconciliation heals the gate's count after up to one period, the caches are
    never healed: 600 s of a cached 'pending'; with SURGE_GATE_RECONCILE_INTERVAL=0 the
    unit stays out of the gate until a restart)."""
    now = datetime.now(UTC).replace(microsecond=0)
    sale = await world.sale(1, now - timedelta(minutes=1), now + timedelta(hours=1))
    order_id = await world.buy(sale, "u", now)
    assert await world.gate.remaining(sale.id) == 0
    world.gate.give_back_delay = 1.0  # longer than the route's deadline (0.3 s here)
    with pytest.raises(Problem) as cut:
        await world.lifecycle.cancel(world.request(order_id, "u"))
    assert cut.value.status == 504
    world.gate.give_back_delay = 0.0
    retry = await world.lifecycle.cancel(world.request(order_id, "u"))
    assert retry[0] == 200  # cancelled: the database returned the unit
    fresh = await world.sales.get_sale(sale.id)
    assert fresh is not None and fresh.remaining == 1
    assert order_id in world.invalidated  # GET /orders/{id} must not keep 'pending'
    assert await world.gate.remaining(sale.id) == 1  # the unit is on sale again


async def test_a_late_payment_expires_the_order_and_answers_409(world: World) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    sale = await world.sale(1, now - timedelta(minutes=1), now + timedelta(hours=1))
    # bought 61 s ago: its pay_by has passed, the sweep (not running here) has not come
    order_id = await world.buy(sale, "u", now - timedelta(seconds=61))
    body = orjson.dumps({"payment_ref": "r"})
    with pytest.raises(Problem) as late:
        await world.lifecycle.pay(world.request(order_id, "u", body, idempotency_key="p"))
    assert (late.value.status, late.value.kind) == (409, "order-expired")
    assert await world.gate.remaining(sale.id) == 1
