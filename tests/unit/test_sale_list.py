"""GET /sales (surge.sales.listing.SaleList) on the in-process fakes: paging, input, the
gate's live counts, and the one-second cache a crowd shares."""

from __future__ import annotations

import asyncio
import inspect
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from surge.backends.memory_gate import MemoryGate
from surge.ground.purchases import GateState
from surge.ground.sales import NewSale, Sale
from surge.ground.web import Problem, Request, Response
from surge.sales import listing
from surge.sales.listing import SaleList
from tests.fakes import MemorySales

pytestmark = pytest.mark.anyio


class CountingSales(MemorySales):
    """Counts the page queries, and can hold them until released."""

    def __init__(self) -> None:
        super().__init__()
        self.pages = 0
        self.hold: asyncio.Event | None = None

    async def sales_page(self, now: datetime, before: int | None, limit: int) -> list[Sale]:
        self.pages += 1
        if self.hold is not None:
            await self.hold.wait()
        return await super().sales_page(now, before, limit)


class BrokenGate(MemoryGate):
    async def remaining(self, sale_id: int) -> int | None:
        raise ConnectionError("redis is down")


async def _sale(
    store: MemorySales, stock: int, starts_in: float = -60, ends_in: float = 3600
) -> Sale:
    now = datetime.now(UTC).replace(microsecond=0)
    new = NewSale(
        "s", stock, 1, now + timedelta(seconds=starts_in), now + timedelta(seconds=ends_in)
    )
    return await store.create_sale(new, now)


async def _get(sales: SaleList, query: str = "") -> tuple[int, Any]:
    request = Request("GET", "/sales", query, {}, b"", "test", b"r")
    try:
        answer = sales.handle(request)
        done: Response = await answer if inspect.isawaitable(answer) else answer
    except Problem as problem:
        return problem.status, problem.kind
    return done[0], orjson.loads(done[2])


async def test_pages_newest_first_with_the_gate_count() -> None:
    store, gate = CountingSales(), MemoryGate()
    first = await _sale(store, 5)
    await _sale(store, 1, -1200, -600)  # ended: never listed
    upcoming = await _sale(store, 7, 600, 7200)
    third = await _sale(store, 3)
    await gate.reconcile(GateState(third.id, 2, 1, 0, 2**50), 60_000)  # one is being bought
    sales = SaleList(store, gate, 1.0)
    status, page = await _get(sales, "limit=2")
    assert status == 200
    assert [s["id"] for s in page["items"]] == [third.id, upcoming.id]
    assert page["items"][0]["remaining"] == 2  # the gate's, not the row's 3
    assert page["items"][1]["state"] == "upcoming" and page["items"][1]["remaining"] == 7
    assert page["next"] == str(upcoming.id)
    status, rest = await _get(sales, f"cursor={page['next']}&limit=2")
    assert [s["id"] for s in rest["items"]] == [first.id] and rest["next"] is None
    assert set(rest["items"][0]) == {
        "id",
        "name",
        "stock",
        "remaining",
        "state",
        "per_user_limit",
        "starts_at",
        "ends_at",
    }
    _, everything = await _get(sales)
    assert len(everything["items"]) == 3 and everything["next"] is None


async def test_the_row_counts_when_the_gate_cannot_say() -> None:
    store = CountingSales()
    sale = await _sale(store, 4)
    _, page = await _get(SaleList(store, BrokenGate(), 1.0))
    assert page["items"][0]["id"] == sale.id and page["items"][0]["remaining"] == 4


@pytest.mark.parametrize(
    ("query", "kind"),
    [
        ("limit=0", "bad-limit"),
        ("limit=101", "bad-limit"),
        ("limit=abc", "bad-limit"),
        ("limit=", "bad-limit"),
        ("limit=-1", "bad-limit"),
        ("limit=" + "9" * 5000, "bad-limit"),
        ("limit=\u0661", "bad-limit"),  # an Arabic-Indic one
        ("cursor=0", "bad-cursor-id"),
        ("cursor=x", "bad-cursor-id"),
        ("cursor=", "bad-cursor-id"),
    ],
)
async def test_bad_paging_is_a_400(query: str, kind: str) -> None:
    assert await _get(SaleList(CountingSales(), MemoryGate(), 1.0), query) == (400, kind)


async def test_a_crowd_shares_one_query_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    store = CountingSales()
    await _sale(store, 5)
    sales = SaleList(store, MemoryGate(), 1.0)
    store.hold = asyncio.Event()
    crowd = [asyncio.ensure_future(_get(sales)) for _ in range(50)]
    await asyncio.sleep(0.01)
    store.hold.set()
    answers = await asyncio.gather(*crowd)
    assert {status for status, _ in answers} == {200} and store.pages == 1
    assert (await _get(sales))[0] == 200 and store.pages == 1  # cached
    assert (await _get(sales, "limit=5"))[0] == 200 and store.pages == 2  # another page
    monkeypatch.setattr(listing, "LIST_TTL", 0.05)
    await _get(sales, "limit=6")
    await asyncio.sleep(0.06)
    await _get(sales, "limit=6")
    assert store.pages == 4  # expired: built again


async def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing, "MAX_PAGES", 200)
    store = CountingSales()
    sales = SaleList(store, MemoryGate(), 1.0)
    for cursor in range(1, 1001):
        assert (await _get(sales, f"cursor={cursor}"))[0] == 200
    assert len(sales._pages) <= 200


async def test_a_slow_database_is_a_504_and_the_build_goes_on() -> None:
    store = CountingSales()
    await _sale(store, 5)
    sales = SaleList(store, MemoryGate(), 0.05)
    store.hold = asyncio.Event()
    assert await _get(sales) == (504, "deadline-exceeded")
    store.hold.set()
    await asyncio.sleep(0.01)
    status, page = await _get(sales)
    assert status == 200 and len(page["items"]) == 1 and store.pages == 1
