"""POST /sales/{id}/orders (surge.sales.purchase.Purchases) on the in-process fakes: MemorySales
(tests/fakes.py, held to SqlSales by tests/contract/test_sales_protocol.py), the real
MemoryGate, SaleConfigs, SoldOutBoard and StockFeed over an in-process bus and rooms."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from surge.auth import Authenticator, mint
from surge.backends.memory import MemoryBus
from surge.backends.memory_gate import MemoryGate
from surge.ground.purchases import GateState
from surge.ground.sales import NewSale, Sale, fingerprint
from surge.ground.web import Problem, Request, Response
from surge.sales.cache import SaleConfigs, SoldOutBoard
from surge.sales.feed import StockFeed
from surge.sales.purchase import Purchases
from tests.fakes import MemorySales

pytestmark = pytest.mark.anyio
SECRET = "unit-secret-0123456789abcdef-0123456789"


class Rooms:
    """The stock feed's rooms, in-process: every message each room was sent."""

    def __init__(self) -> None:
        self.heard: dict[str, list[dict[str, Any]]] = {}

    async def publish(self, room: str, data: bytes) -> None:
        self.heard.setdefault(room, []).append(orjson.loads(data))


@dataclass
class Shop:
    purchases: Purchases
    sales: MemorySales
    gate: MemoryGate
    feed: StockFeed
    rooms: Rooms
    outcomes: dict[str, int]
    invalidated: list[int] = field(default_factory=list)

    async def close(self) -> None:
        await self.purchases.close()
        await self.feed.close()


async def build(
    sales: MemorySales | None = None, gate: MemoryGate | None = None, deadline: float = 1.0
) -> Shop:
    """The one place a Purchases is put together (its signature may change)."""
    sales = MemorySales() if sales is None else sales
    gate = MemoryGate() if gate is None else gate
    bus = MemoryBus()
    board = SoldOutBoard(bus, gate)
    await board.start()
    rooms = Rooms()
    feed = StockFeed(rooms, interval=0.01)
    invalidated: list[int] = []

    async def invalidate(*ids: int) -> None:
        invalidated.extend(ids)

    purchases = Purchases(
        Authenticator(SECRET, 1000, 1 << 20),
        sales,
        gate,
        SaleConfigs(sales),
        board,
        feed,
        deadline,
        invalidate,
    )
    return Shop(purchases, sales, gate, feed, rooms, purchases.outcomes, invalidated)


@pytest.fixture
async def shops() -> AsyncIterator[Callable[..., Any]]:
    """`await shops(...)`: a Shop (see `build`), closed after the test."""
    made: list[Shop] = []

    async def make(**kwargs: Any) -> Shop:
        shop = await build(**kwargs)
        made.append(shop)
        return shop

    yield make
    for shop in made:
        await shop.close()


@pytest.fixture
async def shop(shops: Callable[..., Any]) -> Shop:
    made: Shop = await shops()
    return made


async def _sale(
    shop: Shop, stock: int, limit: int = 1, starts_in: float = -60, ends_in: float = 3600
) -> Sale:
    now = datetime.now(UTC).replace(microsecond=0)
    new = NewSale(
        "t", stock, limit, now + timedelta(seconds=starts_in), now + timedelta(seconds=ends_in)
    )
    return await shop.sales.create_sale(new, now)


def _request(
    sale_id: int | str,
    user: str | None = "alice",
    key: str | None = "k1",
    body: bytes = b'{"quantity":1}',
    token: str | None = None,
) -> Request:
    headers: dict[bytes, bytes] = {}
    if token is not None:
        headers[b"authorization"] = token.encode()
    elif user is not None:
        headers[b"authorization"] = f"Bearer {mint(SECRET, user)}".encode()
    if key is not None:
        headers[b"idempotency-key"] = key.encode()
    request = Request("POST", f"/sales/{sale_id}/orders", "", headers, body, "test", b"r")
    request.params = {"id": str(sale_id)}
    return request


async def _answer(shop: Shop, request: Request) -> Response:
    answer = shop.purchases.handle(request)
    done: Response = await answer if inspect.isawaitable(answer) else answer
    return done


async def _buy(
    shop: Shop, sale_id: int | str, user: str | None = "alice", key: str | None = "k1", **kw: Any
) -> tuple[int, Any]:
    """(201, the order) or (status, problem kind)."""
    try:
        status, _, body = await _answer(shop, _request(sale_id, user, key, **kw))
    except Problem as problem:
        return problem.status, problem.kind
    if status != 201:  # a pre-encoded problem (the sold-out board's)
        return status, orjson.loads(body)["type"].removeprefix("/problems/")
    return status, orjson.loads(body)


async def _sold(shop: Shop, sale_id: int) -> int:
    """Units the database committed for the sale."""
    return sum(o.quantity for o in await shop.sales.sale_orders(sale_id))


async def test_a_purchase_is_created_and_its_key_replays_the_same_bytes(shop: Shop) -> None:
    sale = await _sale(shop, stock=5)
    first = await _answer(shop, _request(sale.id))
    status, head, body = first
    assert status == 201
    order = orjson.loads(body)
    assert (order["sale_id"], order["user_id"], order["quantity"]) == (sale.id, "alice", 1)
    assert order["status"] == "paid"
    assert f"location: /orders/{order['id']}\r\n".encode() in head
    stored = await shop.sales.order_by_key("alice", "k1")
    assert stored is not None and stored[0].id == order["id"]
    assert stored[1] == fingerprint(sale.id, 1)
    await asyncio.sleep(0.01)  # the bookkeeping after the commit: the gate learns the order
    assert shop.invalidated == [order["id"]]
    assert await _answer(shop, _request(sale.id)) == first  # replayed by the gate
    assert await shop.gate.remaining(sale.id) == 4
    assert len(await shop.sales.sale_orders(sale.id)) == 1
    assert shop.outcomes == {"ordered": 2}


async def test_a_key_reused_for_another_request_is_422(shop: Shop) -> None:
    sale = await _sale(shop, stock=5, limit=5)
    other = await _sale(shop, stock=5)
    assert (await _buy(shop, sale.id))[0] == 201
    assert await _buy(shop, sale.id, body=b'{"quantity":2}') == (422, "key-reused")
    # another sale: the gate of that sale never saw the key, the database refuses it
    assert await _buy(shop, other.id) == (422, "key-reused")
    assert await shop.gate.remaining(other.id) == 5  # its reservation was given back
    assert len(await shop.sales.user_orders("alice", None, 10)) == 1
    assert shop.outcomes["key-reused"] == 2


async def test_buyers_racing_for_fewer_units_never_oversell(shop: Shop) -> None:
    sale = await _sale(shop, stock=10)
    answers = await asyncio.gather(*(_buy(shop, sale.id, f"u{i}") for i in range(60)))
    statuses = [status for status, _ in answers]
    assert statuses.count(201) == 10
    assert sorted({a for a in answers if a[0] != 201}) == [(409, "sold-out")]
    assert await _sold(shop, sale.id) == 10
    assert {body["user_id"] for status, body in answers if status == 201} == {
        o.user_id for o in await shop.sales.sale_orders(sale.id)
    }
    fresh = await shop.sales.get_sale(sale.id)
    assert fresh is not None and fresh.remaining == 0
    assert await shop.gate.remaining(sale.id) == 0
    assert shop.outcomes["ordered"] == 10
    assert shop.outcomes["sold-out"] + shop.outcomes.get("sold-out-local", 0) == 50
    assert len(shop.sales.batches) < 10  # winners were committed together
    await shop.feed.close()
    assert shop.rooms.heard[f"sale:{sale.id}"][-1] == {"remaining": 0, "state": "sold_out"}


async def test_mixed_quantities_never_oversell(shop: Shop) -> None:
    sale = await _sale(shop, stock=7, limit=3)
    answers = await asyncio.gather(
        *(_buy(shop, sale.id, f"u{i}", body=b'{"quantity":%d}' % (1 + i % 3)) for i in range(30))
    )
    fresh = await shop.sales.get_sale(sale.id)
    assert fresh is not None
    sold = sum(body["quantity"] for status, body in answers if status == 201)
    assert sold == await _sold(shop, sale.id) == 7 - fresh.remaining
    assert 5 <= sold <= 7  # a unit or two may be left that nobody asked for so few of
    assert await shop.gate.remaining(sale.id) == fresh.remaining


async def test_the_sold_out_board_refuses_from_memory_but_never_a_held_key(shop: Shop) -> None:
    sale = await _sale(shop, stock=1)
    won = await _buy(shop, sale.id, "alice", "k")
    assert await _buy(shop, sale.id, "bob", "k") == (409, "sold-out")  # the gate: marks it
    await asyncio.sleep(0.01)  # the board copies the gate's keys
    late = shop.purchases.handle(_request(sale.id, "carol", "k"))
    assert isinstance(late, tuple)  # answered without any I/O
    assert late[0] == 409
    assert shop.outcomes["sold-out-local"] == 1
    assert await _buy(shop, sale.id, "alice", "k") == won  # a replay is never refused


async def test_the_per_user_limit_is_409_limit_reached(shop: Shop) -> None:
    sale = await _sale(shop, stock=10, limit=2)
    assert (await _buy(shop, sale.id, "alice", "k1"))[0] == 201
    assert (await _buy(shop, sale.id, "alice", "k2"))[0] == 201
    assert await _buy(shop, sale.id, "alice", "k3") == (409, "limit-reached")
    assert await _buy(shop, sale.id, "bob", "k1", body=b'{"quantity":3}') == (
        409,
        "limit-reached",
    )
    assert (await _buy(shop, sale.id, "bob", "k1", body=b'{"quantity":2}'))[0] == 201
    assert await _sold(shop, sale.id) == 4
    assert await shop.gate.remaining(sale.id) == 6
    assert shop.outcomes["limit-reached"] == 2


async def test_a_sale_not_open_yet_is_403(shop: Shop) -> None:
    sale = await _sale(shop, stock=5, starts_in=600)
    assert await _buy(shop, sale.id) == (403, "sale-not-live")  # loaded, then refused
    with pytest.raises(Problem) as refused:  # now cached: refused before any await
        shop.purchases.handle(_request(sale.id))
    assert (refused.value.status, refused.value.kind) == (403, "sale-not-live")
    assert await shop.sales.sale_orders(sale.id) == []


async def test_an_ended_sale_refuses_new_keys_but_replays_committed_ones(shop: Shop) -> None:
    sale = await _sale(shop, stock=5, starts_in=-7200, ends_in=-60)
    late = await shop.sales.purchase(  # committed in its last second, the 201 lost
        sale, "alice", 1, "k", fingerprint(sale.id, 1), datetime.now(UTC)
    )
    assert late.order is not None
    status, body = await _buy(shop, sale.id, "alice", "k")
    assert (status, body["id"]) == (201, late.order.id)
    assert await _buy(shop, sale.id, "alice", "k", body=b'{"quantity":2}') == (422, "key-reused")
    assert await _buy(shop, sale.id, "bob", "k") == (403, "sale-not-live")


async def test_an_unknown_sale_is_404(shop: Shop) -> None:
    assert await _buy(shop, 999) == (404, "sale-not-found")
    assert shop.outcomes == {"sale-not-found": 1}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"user": None}, (401, "unauthorized")),
        ({"token": "Bearer not-a-jwt"}, (401, "unauthorized")),
        (
            {"token": f"Bearer {mint('another-secret-0123456789abcdef-0123456789', 'alice')}"},
            (401, "unauthorized"),
        ),
        ({"token": f"Bearer {mint(SECRET, 'alice', ttl=-60)}"}, (401, "token-expired")),
        ({"sale_id": "0"}, (400, "bad-sale-id")),
        ({"sale_id": "1x"}, (400, "bad-sale-id")),
        ({"key": None}, (400, "missing-idempotency-key")),
        ({"key": "a|b"}, (400, "bad-idempotency-key")),
        ({"key": "x" * 65}, (400, "bad-idempotency-key")),
        ({"body": b"{"}, (400, "bad-json")),
        ({"body": b"[1]"}, (400, "bad-json")),
        ({"body": b"{}"}, (422, "invalid-purchase")),
        ({"body": b'{"quantity":0}'}, (422, "invalid-purchase")),
        ({"body": b'{"quantity":1001}'}, (422, "invalid-purchase")),
        ({"body": b'{"quantity":"1"}'}, (422, "invalid-purchase")),
        ({"body": b'{"quantity":1,"x":1}'}, (422, "invalid-purchase")),
    ],
)
async def test_bad_requests_are_refused_before_any_io(
    shop: Shop, overrides: dict[str, Any], expected: tuple[int, str]
) -> None:
    sale = await _sale(shop, stock=5)
    args: dict[str, Any] = {"sale_id": sale.id, **overrides}
    with pytest.raises(Problem) as refused:
        shop.purchases.handle(_request(**args))  # synchronously: no coroutine was made
    assert (refused.value.status, refused.value.kind) == expected
    assert shop.outcomes == {refused.value.kind: 1}
    assert shop.sales.batches == []
    assert await shop.gate.remaining(sale.id) is None  # the gate was never asked


async def test_a_failed_commit_is_503_and_gives_the_stock_back(shop: Shop) -> None:
    sale = await _sale(shop, stock=3)
    shop.sales.fail_next(ConnectionError("the database went away"))
    with pytest.raises(Problem) as failed:
        await _answer(shop, _request(sale.id))
    assert (failed.value.status, failed.value.kind) == (503, "unavailable")
    assert ("retry-after", "1") in failed.value.headers
    assert await shop.gate.remaining(sale.id) == 3  # given back
    assert await shop.sales.order_by_key("alice", "k1") is None
    # the key is uncertain: its retry asks the database, finds nothing and buys afresh
    status, body = await _buy(shop, sale.id)
    assert status == 201 and body["user_id"] == "alice"
    assert await shop.gate.remaining(sale.id) == 2
    assert await _sold(shop, sale.id) == 1


async def test_a_commit_whose_answer_was_lost_replays_on_retry(shop: Shop) -> None:
    sale = await _sale(shop, stock=3)
    shop.sales.fail_next(ConnectionError("lost connection during query"), landed=True)
    assert await _buy(shop, sale.id) == (503, "unavailable")
    stored = await shop.sales.order_by_key("alice", "k1")
    assert stored is not None  # it committed all the same
    assert await shop.gate.remaining(sale.id) == 3  # over-admitting is safe
    status, body = await _buy(shop, sale.id)
    assert (status, body["id"]) == (201, stored[0].id)
    assert len(await shop.sales.sale_orders(sale.id)) == 1  # no second order
    await shop.purchases.keeper.sale(sale.id)  # the next reconciliation counts it
    assert await shop.gate.remaining(sale.id) == 2


async def test_a_retry_while_the_first_commit_runs_is_409_key_in_flight(shop: Shop) -> None:
    sale = await _sale(shop, stock=3)
    stall = shop.sales.stall_next()
    first = asyncio.ensure_future(_buy(shop, sale.id))
    await asyncio.sleep(0.01)  # reserved, and committing
    assert await _buy(shop, sale.id) == (409, "key-in-flight")
    stall.set()
    status, body = await first
    assert status == 201
    await asyncio.sleep(0.01)
    assert await _buy(shop, sale.id) == (201, body)


async def test_a_commit_past_its_deadline_and_grace_is_503_then_replays(
    shops: Callable[..., Any],
) -> None:
    shop: Shop = await shops(deadline=0.05)
    sale = await _sale(shop, stock=3)
    stall = shop.sales.stall_next()
    assert await _buy(shop, sale.id) == (503, "unavailable")  # after 2 x 50 ms
    assert await shop.gate.remaining(sale.id) == 3
    stall.set()  # the database answers at last: the commit lands, unheard
    await asyncio.sleep(0.01)
    stored = await shop.sales.order_by_key("alice", "k1")
    assert stored is not None
    status, body = await _buy(shop, sale.id)
    assert (status, body["id"]) == (201, stored[0].id)


async def test_a_forgotten_gate_is_rebuilt_from_the_database(shops: Callable[..., Any]) -> None:
    before: Shop = await shops()
    sale = await _sale(before, stock=5, limit=1)
    first = await _answer(before, _request(sale.id, "alice", "k"))
    assert first[0] == 201
    assert (await _buy(before, sale.id, "bob", "k"))[0] == 201
    # Redis restarted empty (or another process): a fresh gate over the same database
    after: Shop = await shops(sales=before.sales, gate=MemoryGate())
    assert await after.gate.remaining(sale.id) is None
    assert await _answer(after, _request(sale.id, "alice", "k")) == first  # the same bytes
    assert await after.gate.remaining(sale.id) == 3  # reconciled: 5 - 2
    assert await _buy(after, sale.id, "alice", "k2") == (409, "limit-reached")  # counted
    assert (await _buy(after, sale.id, "carol", "k"))[0] == 201
    assert await after.gate.remaining(sale.id) == 2
    assert after.purchases.keeper.runs == 1


async def test_a_gate_that_over_admits_cannot_oversell(shop: Shop) -> None:
    """The database decides: a gate that believes in more stock than there is (a stale
    reservation given back whose commit landed after all) only lets more buyers try."""
    sale = await _sale(shop, stock=3)
    await shop.gate.reconcile(
        GateState(sale.id, 10, 1, int(sale.starts_ts * 1000), int(sale.ends_ts * 1000)), 60_000
    )
    answers = await asyncio.gather(*(_buy(shop, sale.id, f"u{i}") for i in range(8)))
    assert sorted(status for status, _ in answers) == [201] * 3 + [409] * 5
    assert {a for a in answers if a[0] == 409} == {(409, "sold-out")}
    assert await _sold(shop, sale.id) == 3
    assert await shop.gate.remaining(sale.id) == 0  # told by the database
    assert await _buy(shop, sale.id, "late", "k") == (409, "sold-out")
    assert len(await shop.sales.sale_orders(sale.id)) == 3
