"""The `Sales` interface, through its methods only: `SqlSales` on every database and the
unit tests' `MemorySales` (tests/fakes.py) behave the same, so a unit test that passes
against the fake tells the truth about the real store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from surge.ground.interfaces import Sales
from surge.ground.purchases import Purchase, StoredOrder, Win
from surge.ground.sales import NewSale, Sale

pytestmark = pytest.mark.anyio


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)  # what every database keeps


def _new(stock: int, limit: int = 1, starts_in: float = -60, ends_in: float = 3600) -> NewSale:
    now = _now()
    return NewSale(
        "t", stock, limit, now + timedelta(seconds=starts_in), now + timedelta(seconds=ends_in)
    )


async def _buy(
    store: Sales, sale: Sale, user: str, key: str, quantity: int = 1, hash_: str = "h"
) -> Purchase:
    return await store.purchase(sale, user, quantity, key, hash_, _now())


async def _remaining(store: Sales, sale_id: int) -> int:
    sale = await store.get_sale(sale_id)
    assert sale is not None
    return sale.remaining


async def test_a_created_sale_reads_back(sales_store: Sales) -> None:
    new = _new(stock=7, limit=3)
    sale = await sales_store.create_sale(new, _now())
    assert (sale.name, sale.stock, sale.remaining, sale.per_user_limit) == ("t", 7, 7, 3)
    assert await sales_store.get_sale(sale.id) == sale
    other = await sales_store.create_sale(_new(stock=1), _now())
    assert other.id > sale.id
    assert await sales_store.get_sale(other.id + 1000) is None


async def test_open_sales_are_those_not_ended(sales_store: Sales) -> None:
    live = await sales_store.create_sale(_new(1), _now())
    upcoming = await sales_store.create_sale(_new(1, starts_in=600, ends_in=7200), _now())
    await sales_store.create_sale(_new(1, starts_in=-1200, ends_in=-600), _now())  # ended
    assert sorted(await sales_store.open_sales(_now())) == [live.id, upcoming.id]
    later = _now() + timedelta(seconds=4000)  # the live one has ended by then
    assert await sales_store.open_sales(later) == [upcoming.id]


async def test_stock_runs_out_exactly_and_never_below_zero(sales_store: Sales) -> None:
    sale = await sales_store.create_sale(_new(stock=3, limit=2), _now())
    outcomes = [(await _buy(sales_store, sale, f"u{i}", "k")).outcome for i in range(5)]
    assert outcomes == ["committed"] * 3 + ["sold_out"] * 2
    assert await _remaining(sales_store, sale.id) == 0
    assert len(await sales_store.sale_orders(sale.id)) == 3

    two = await sales_store.create_sale(_new(stock=3, limit=2), _now())
    assert (await _buy(sales_store, two, "a", "k", quantity=2)).outcome == "committed"
    refused = await _buy(sales_store, two, "b", "k", quantity=2)  # 1 left: not 2
    assert (refused.outcome, refused.order) == ("sold_out", None)
    assert await _remaining(sales_store, two.id) == 1
    assert (await _buy(sales_store, two, "b", "k", quantity=1)).outcome == "committed"
    assert await _remaining(sales_store, two.id) == 0


async def test_the_limit_holds_across_keys(sales_store: Sales) -> None:
    sale = await sales_store.create_sale(_new(stock=10, limit=2), _now())
    assert (await _buy(sales_store, sale, "alice", "k1")).outcome == "committed"
    assert (await _buy(sales_store, sale, "alice", "k2")).outcome == "committed"
    over = await _buy(sales_store, sale, "alice", "k3")
    assert (over.outcome, over.order) == ("limit", None)
    assert (await _buy(sales_store, sale, "bob", "k1", quantity=3)).outcome == "limit"
    assert (await _buy(sales_store, sale, "bob", "k1", quantity=2)).outcome == "committed"
    assert await _remaining(sales_store, sale.id) == 6
    other = await sales_store.create_sale(_new(stock=10, limit=2), _now())  # its own count
    assert (await _buy(sales_store, other, "alice", "k4", quantity=2)).outcome == "committed"
    assert await sales_store.order_by_key("alice", "k3") is None


async def test_a_used_key_replays_its_first_order_and_hash(sales_store: Sales) -> None:
    sale = await sales_store.create_sale(_new(stock=2, limit=5), _now())
    first = await _buy(sales_store, sale, "alice", "k", quantity=1, hash_="first")
    assert first.outcome == "committed" and first.order is not None
    assert first.request_hash == "first"
    assert first.order.created_at.tzinfo is not None
    assert first.order.created_at.microsecond == 0
    again = await _buy(sales_store, sale, "alice", "k", quantity=2, hash_="second")
    assert again == Purchase("duplicate", first.order, "first")
    assert await sales_store.order_by_key("alice", "k") == (first.order, "first")
    assert await _remaining(sales_store, sale.id) == 1  # the replay took nothing
    # sold out, or in another sale: still the replay of the first order
    assert (await _buy(sales_store, sale, "bob", "k")).outcome == "committed"
    assert (await _buy(sales_store, sale, "alice", "k")).outcome == "duplicate"
    other = await sales_store.create_sale(_new(stock=5), _now())
    elsewhere = await _buy(sales_store, other, "alice", "k", hash_="other sale")
    assert elsewhere == Purchase("duplicate", first.order, "first")
    assert await _remaining(sales_store, other.id) == 5
    assert await sales_store.order_by_key("bob", "nope") is None


async def test_purchase_many_gives_each_winner_its_own_outcome(sales_store: Sales) -> None:
    sale = await sales_store.create_sale(_new(stock=6), _now())
    wins = [Win(f"u{i}", 1, f"k{i}", f"h{i}") for i in range(5)]
    first = await sales_store.purchase_many(sale, wins, _now())
    assert [p.outcome for p in first if isinstance(p, Purchase)] == ["committed"] * 5
    orders = [p.order for p in first if isinstance(p, Purchase) and p.order is not None]
    assert [(o.user_id, o.quantity, o.sale_id) for o in orders] == [
        (f"u{i}", 1, sale.id) for i in range(5)
    ]
    assert len({o.id for o in orders}) == 5
    assert [p.request_hash for p in first if isinstance(p, Purchase)] == [f"h{i}" for i in range(5)]
    # a repeat buyer, a replayed key, and more buyers than stock: each its own outcome
    mixed = [
        Win("u0", 1, "again", "x"),
        Win("u1", 1, "k1", "h1"),
        Win("v1", 1, "k", "h"),
        Win("v2", 1, "k", "h"),
    ]
    second = await sales_store.purchase_many(sale, mixed, _now())
    assert [p.outcome for p in second if isinstance(p, Purchase)] == [
        "limit",
        "duplicate",
        "committed",
        "sold_out",
    ]
    replayed = second[1]
    assert isinstance(replayed, Purchase)
    assert (replayed.order, replayed.request_hash) == (orders[1], "h1")
    assert await _remaining(sales_store, sale.id) == 0
    assert len(await sales_store.sale_orders(sale.id)) == 6


async def test_gate_state_is_remaining_and_every_order(sales_store: Sales) -> None:
    new = _new(stock=5, limit=2)
    sale = await sales_store.create_sale(new, _now())
    empty = await sales_store.gate_state(sale.id)
    assert empty is not None
    assert (empty.sale_id, empty.remaining, empty.per_user_limit, empty.orders) == (
        sale.id,
        5,
        2,
        (),
    )
    assert empty.starts_ms == int(new.starts_at.timestamp() * 1000)
    assert empty.ends_ms == int(new.ends_at.timestamp() * 1000)
    a = await _buy(sales_store, sale, "a", "ka", quantity=2, hash_="ha")
    b = await _buy(sales_store, sale, "b", "kb", quantity=1, hash_="hb")
    other = await sales_store.create_sale(_new(stock=5), _now())
    await _buy(sales_store, other, "c", "kc")  # another sale's: not listed
    assert a.order is not None and b.order is not None
    state = await sales_store.gate_state(sale.id)
    assert state is not None and state.remaining == 2
    assert sorted(state.orders, key=lambda o: o.order_id) == [
        StoredOrder("a", "ka", a.order.id, 2, "ha"),
        StoredOrder("b", "kb", b.order.id, 1, "hb"),
    ]
    assert await sales_store.gate_state(other.id + 1000) is None


async def test_user_orders_page_newest_first(sales_store: Sales) -> None:
    sale = await sales_store.create_sale(_new(stock=20, limit=10), _now())
    mine = []
    for i in range(5):
        bought = await _buy(sales_store, sale, "alice", f"k{i}")
        assert bought.order is not None
        mine.append(bought.order)
        await _buy(sales_store, sale, "bob", f"k{i}")  # interleaved: not alice's
    ids = [o.id for o in mine]
    assert ids == sorted(ids) and len(set(ids)) == 5  # increasing
    newest = list(reversed(mine))
    assert await sales_store.user_orders("alice", None, 2) == newest[:2]
    assert await sales_store.user_orders("alice", newest[1].id, 2) == newest[2:4]
    assert await sales_store.user_orders("alice", newest[3].id, 2) == newest[4:]
    assert await sales_store.user_orders("alice", newest[4].id, 2) == []
    assert await sales_store.user_orders("alice", None, 50) == newest
    assert await sales_store.user_orders("nobody", None, 50) == []
    assert sorted(o.id for o in await sales_store.sale_orders(sale.id)) == sorted(
        [*ids, *(o.id for o in await sales_store.user_orders("bob", None, 50))]
    )


async def test_sales_page_lists_sales_not_ended_newest_first(sales_store: Sales) -> None:
    live = await sales_store.create_sale(_new(5), _now())
    await sales_store.create_sale(_new(1, starts_in=-1200, ends_in=-600), _now())  # ended
    upcoming = await sales_store.create_sale(_new(2, starts_in=600, ends_in=7200), _now())
    sold = await sales_store.create_sale(_new(1), _now())
    assert (await _buy(sales_store, sold, "alice", "k")).outcome == "committed"
    now = _now()
    page = await sales_store.sales_page(now, None, 10)
    assert [s.id for s in page] == [sold.id, upcoming.id, live.id]
    assert page[0].remaining == 0  # the row as it is now, not as created
    assert page[1] == upcoming and page[2] == live
    assert await sales_store.sales_page(now, None, 2) == page[:2]
    assert await sales_store.sales_page(now, page[1].id, 2) == page[2:]
    assert await sales_store.sales_page(now, live.id, 2) == []
    later = now + timedelta(seconds=4000)  # only the upcoming one has not ended by then
    assert [s.id for s in await sales_store.sales_page(later, None, 10)] == [upcoming.id]
