"""POST /sales, GET /sales/{id}, GET /users/me/orders (surge.sales.catalog.Catalog) on the
in-process fakes: MemorySales (tests/fakes.py) and the real MemoryGate and SaleConfigs."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from surge.auth import Authenticator, mint
from surge.backends.memory_gate import MemoryGate
from surge.ground.sales import NewSale, Sale
from surge.ground.web import Problem, Request, Response
from surge.sales.cache import SaleConfigs
from surge.sales.catalog import Catalog
from tests.fakes import MemorySales

pytestmark = pytest.mark.anyio
SECRET = "unit-secret-0123456789abcdef-0123456789"
ADMIN = f"Bearer {mint(SECRET, 'root', admin=True)}"


@dataclass
class Shelf:
    catalog: Catalog
    sales: MemorySales
    gate: MemoryGate


def build(sales: MemorySales | None = None, gate: MemoryGate | None = None) -> Shelf:
    """The one place a Catalog is put together (its signature may change)."""
    sales = MemorySales() if sales is None else sales
    gate = MemoryGate() if gate is None else gate
    catalog = Catalog(
        Authenticator(SECRET, 1000, 1 << 20), sales, gate, SaleConfigs(sales), lambda _: 1.0
    )
    return Shelf(catalog, sales, gate)


@pytest.fixture
def shelf() -> Shelf:
    return build()


def _request(
    path: str, token: str | None = None, body: bytes = b"", query: str = "", **params: str
) -> Request:
    headers = {} if token is None else {b"authorization": token.encode()}
    request = Request("GET", path, query, headers, body, "test", b"r")
    request.params = dict(params)
    return request


async def _call(handler: Any, request: Request) -> tuple[int, bytes, Any]:
    try:
        answer = handler(request)
        done: Response = await answer if inspect.isawaitable(answer) else answer
    except Problem as problem:
        return problem.status, b"", problem.kind
    status, head, body = done
    return status, head, orjson.loads(body)


def _body(stock: Any = 10, **fields: Any) -> bytes:
    now = datetime.now(UTC).replace(microsecond=0)
    sale: dict[str, Any] = {
        "name": "flash",
        "stock": stock,
        "starts_at": (now - timedelta(minutes=1)).isoformat(),
        "ends_at": (now + timedelta(hours=1)).isoformat(),
        **fields,
    }
    return orjson.dumps({k: v for k, v in sale.items() if v is not None})


async def _create(shelf: Shelf, body: bytes, token: str | None = ADMIN) -> tuple[int, bytes, Any]:
    return await _call(shelf.catalog.create, _request("/sales", token, body))


async def test_an_admin_creates_a_sale_and_its_gate(shelf: Shelf) -> None:
    status, head, sale = await _create(shelf, _body(stock=10, per_user_limit=2))
    assert status == 201
    assert f"location: /sales/{sale['id']}\r\n".encode() in head
    assert (sale["name"], sale["stock"], sale["remaining"], sale["per_user_limit"]) == (
        "flash",
        10,
        10,
        2,
    )
    assert sale["state"] == "live"
    assert sale["starts_at"].endswith("Z")
    stored = await shelf.sales.get_sale(sale["id"])
    assert stored is not None and (stored.stock, stored.per_user_limit) == (10, 2)
    assert await shelf.gate.remaining(sale["id"]) == 10  # installed at once
    assert (await shelf.gate.reserve(sale["id"], "u", "k", 2, "f")).outcome == "ok"
    assert (await shelf.gate.reserve(sale["id"], "u", "k2", 1, "f")).outcome == "limit"


@pytest.mark.parametrize(
    ("token", "body", "expected"),
    [
        (None, _body(), (401, "unauthorized")),
        (f"Bearer {mint(SECRET, 'alice')}", _body(), (403, "forbidden")),
        (ADMIN, b"not json", (400, "bad-json")),
        (ADMIN, _body(stock=0), (422, "invalid-sale")),
        (ADMIN, _body(stock="10"), (422, "invalid-sale")),
        (ADMIN, _body(name=" "), (422, "invalid-sale")),
        (ADMIN, _body(per_user_limit=0), (422, "invalid-sale")),
        (ADMIN, _body(ends_at="2020-01-01T00:00:00Z"), (422, "invalid-sale")),
        (ADMIN, _body(starts_at="2030-01-01T00:00:00"), (422, "invalid-sale")),  # no zone
        (ADMIN, _body(colour="red"), (422, "invalid-sale")),
        (ADMIN, _body(stock=None), (422, "invalid-sale")),
    ],
    ids=[
        "no-token",
        "not-admin",
        "bad-json",
        "no-stock",
        "stock-text",
        "blank-name",
        "no-limit",
        "ends-first",
        "no-zone",
        "unknown-field",
        "stock-missing",
    ],
)
async def test_creating_a_sale_is_refused_when_it_should_be(
    shelf: Shelf, token: str | None, body: bytes, expected: tuple[int, str]
) -> None:
    status, _, kind = await _create(shelf, body, token)
    assert (status, kind) == expected
    assert await shelf.sales.open_sales(datetime.now(UTC)) == []  # nothing stored


async def _sale(shelf: Shelf, stock: int, starts_in: float = -60, limit: int = 1) -> Sale:
    now = datetime.now(UTC).replace(microsecond=0)
    new = NewSale("t", stock, limit, now + timedelta(seconds=starts_in), now + timedelta(hours=1))
    return await shelf.sales.create_sale(new, now)


async def test_the_view_shows_the_gate_s_count(shelf: Shelf) -> None:
    _, _, created = await _create(shelf, _body(stock=5))
    await shelf.gate.reserve(created["id"], "u", "k", 1, "f")  # being committed: not left
    status, _, view = await _call(shelf.catalog.view, _request("/", id=str(created["id"])))
    assert (status, view["remaining"], view["state"], view["stock"]) == (200, 4, "live", 5)
    assert view == {**created, "remaining": 4}
    # cached for a moment: answered at once, without asking the gate
    await shelf.gate.reserve(created["id"], "v", "k", 1, "f")
    again = shelf.catalog.view(_request("/", id=str(created["id"])))
    assert isinstance(again, tuple) and orjson.loads(again[2])["remaining"] == 4


async def test_the_view_falls_back_to_the_database_without_a_gate(shelf: Shelf) -> None:
    sale = await _sale(shelf, stock=3, starts_in=600)
    await shelf.sales.purchase(sale, "u", 1, "k", "h", datetime.now(UTC))
    status, _, view = await _call(shelf.catalog.view, _request("/", id=str(sale.id)))
    assert (status, view["remaining"], view["state"]) == (200, 2, "upcoming")


async def test_the_view_of_an_unknown_or_bad_id(shelf: Shelf) -> None:
    assert (await _call(shelf.catalog.view, _request("/", id="42")))[::2] == (
        404,
        "sale-not-found",
    )
    assert (await _call(shelf.catalog.view, _request("/", id="-1")))[::2] == (400, "bad-sale-id")


async def test_my_orders_page_newest_first(shelf: Shelf) -> None:
    sale = await _sale(shelf, stock=20, limit=10)
    now = datetime.now(UTC)
    for i in range(5):
        await shelf.sales.purchase(sale, "alice", 1, f"k{i}", "h", now)
        await shelf.sales.purchase(sale, "bob", 1, f"k{i}", "h", now)
    token = f"Bearer {mint(SECRET, 'alice')}"
    ids = [o.id for o in await shelf.sales.user_orders("alice", None, 10)]
    assert len(ids) == 5 and ids == sorted(ids, reverse=True)

    async def page(query: str) -> tuple[list[int], Any]:
        status, _, body = await _call(shelf.catalog.my_orders, _request("/", token, query=query))
        assert status == 200
        assert {o["user_id"] for o in body["items"]} <= {"alice"}
        return [o["id"] for o in body["items"]], body["next"]

    first, cursor = await page("limit=2")
    assert (first, cursor) == (ids[:2], str(ids[1]))
    second, cursor = await page(f"cursor={cursor}&limit=2")
    assert (second, cursor) == (ids[2:4], str(ids[3]))
    assert await page(f"cursor={cursor}&limit=2") == (ids[4:], None)
    assert await page("") == (ids, None)


@pytest.mark.parametrize(
    ("query", "token", "expected"),
    [
        ("", None, (401, "unauthorized")),
        ("limit=0", "alice", (400, "bad-limit")),
        ("limit=201", "alice", (400, "bad-limit")),
        ("limit=x", "alice", (400, "bad-limit")),
        ("cursor=abc", "alice", (400, "bad-cursor-id")),
    ],
)
async def test_my_orders_refuses_bad_requests(
    shelf: Shelf, query: str, token: str | None, expected: tuple[int, str]
) -> None:
    header = None if token is None else f"Bearer {mint(SECRET, token)}"
    status, _, kind = await _call(shelf.catalog.my_orders, _request("/", header, query=query))
    assert (status, kind) == expected
