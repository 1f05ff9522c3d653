"""Orders change after their purchase (issue 19; found by the review of it): a lookup that
read the order before a payment, cancellation or expiry committed, and answers after that
transition's invalidation ran, must not leave the old state in the near cache (300 s) or
the shared cache (600 s): GET /orders/{id} would answer "pending" for a paid order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from surge.auth import Authenticator
from surge.backends.memory import MemoryBus, MemoryCache
from surge.ground.orders import Order
from surge.orders import OrderQuery, OrderQueryOptions, OrderStats
from tests.unit.test_orders import SECRET, WHEN, _call, _json, _request


class SlowReadStore:
    """A database read that sees the row as it was when the read began (before the
    transition committed) and answers after the transition's invalidation ran."""

    def __init__(self, order: Order) -> None:
        self.orders = {order.id: order}
        self.size = 4
        self.reading = asyncio.Event()
        self.answer = asyncio.Event()

    async def get_orders(self, ids: Sequence[int]) -> dict[int, Order]:
        snapshot = {i: self.orders[i] for i in ids if i in self.orders}  # read now
        self.reading.set()
        await self.answer.wait()  # ... the reply arrives later
        return snapshot

    def changed(self, ids: Sequence[int]) -> None: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


@pytest.mark.anyio
async def test_a_read_that_raced_a_transition_does_not_cache_the_old_state() -> None:
    pending = Order(1, 1, "alice", 1, "pending", WHEN, WHEN)
    store = SlowReadStore(pending)
    cache, bus = MemoryCache(), MemoryBus()
    queries = []
    for _ in range(2):  # two processes sharing the cache and the bus
        query = OrderQuery(
            OrderQueryOptions(), Authenticator(SECRET), cache, store, bus, OrderStats()
        )
        await query.start()
        queries.append(query)

    lookup = asyncio.ensure_future(_call(queries[0], _request("1")))  # GET, a cache miss
    await store.reading.wait()
    # the payment commits, and surge.sales.payments invalidates the order everywhere
    store.orders[1] = Order(1, 1, "alice", 1, "paid", WHEN)
    await queries[0].invalidate(1)
    store.answer.set()  # the read begun before the commit answers now
    assert _json(await lookup)["status"] == "pending"  # fine: it began before the payment

    # every GET after the payment's 200 must see it paid
    assert _json(await _call(queries[0], _request("1")))["status"] == "paid"  # near cache
    assert _json(await _call(queries[1], _request("1")))["status"] == "paid"  # shared cache
