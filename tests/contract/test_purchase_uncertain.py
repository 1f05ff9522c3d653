"""A commit whose answer was lost (the connection died after the database committed) must
not cost the buyer their order: the retry with the same key gets its 201 (found by the
chaos suite, issue 13: the key had been released, another attempt of the same user took
the limit, and the retry was told 409 limit-reached for a purchase that had committed)."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from surge import db
from surge.auth import Authenticator, mint
from surge.backends.memory import MemoryBus
from surge.backends.memory_gate import MemoryGate
from surge.backends.redis import connect
from surge.backends.redis_gate import RedisGate
from surge.backends.sql import create_engine
from surge.backends.sql_sales import SqlSales
from surge.ground.interfaces import Gate
from surge.ground.purchases import Purchase, Win
from surge.ground.sales import NewSale, Sale, fingerprint
from surge.ground.web import Problem, Request, Response
from surge.sales.cache import SaleConfigs, SoldOutBoard
from surge.sales.feed import StockFeed
from surge.sales.purchase import Purchases
from tests.backends import Backend

pytestmark = pytest.mark.anyio
SECRET = "contract-secret-0123456789abcdef-0123"
DEADLINE = 0.5  # a purchase's deadline; its commit gets as much again (the grace)


class _Rooms:
    async def publish(self, room: str, data: bytes) -> None:
        pass


class AnswerLost(SqlSales):
    """Commits for real, then loses the answer of the next `lose` batches; while `stall`
    is clear, the next batch waits for it (a database that stopped answering)."""

    lose = 0
    stall: asyncio.Event | None = None

    async def purchase_many(
        self, sale: Sale, wins: list[Win], now: datetime
    ) -> list[Purchase | Exception]:
        if self.stall is not None:
            stall, self.stall = self.stall, None
            await stall.wait()
        outcomes = await super().purchase_many(sale, wins, now)
        if self.lose:
            self.lose -= 1
            raise ConnectionError("Lost connection to MySQL server during query")
        return outcomes


@pytest.fixture
async def purchases(backend: Backend) -> AsyncIterator[tuple[Purchases, AnswerLost, Gate]]:
    await asyncio.to_thread(db.migrate, backend.database_url)
    engine = create_engine(backend.database_url, pool_size=4)
    sales = AnswerLost(engine)
    client = connect(backend.redis_url, 8) if backend.redis_url else None
    gate: Gate = RedisGate(client, backend.prefix) if client else MemoryGate()
    made = Purchases(
        Authenticator(SECRET, 100, 1 << 20),
        sales,
        gate,
        SaleConfigs(sales),
        SoldOutBoard(MemoryBus(), gate),
        StockFeed(_Rooms()),
        DEADLINE,
        _nothing,
    )
    try:
        yield made, sales, gate
    finally:
        await made.close()
        if client is not None:
            await client.aclose()
        await engine.dispose()


async def _nothing(*_: Any) -> None:
    pass


async def _buy(purchases: Purchases, sale_id: int, user: str, key: str) -> tuple[int, Any]:
    headers = {
        b"authorization": f"Bearer {mint(SECRET, user)}".encode(),
        b"idempotency-key": key.encode(),
    }
    request = Request("POST", f"/sales/{sale_id}/orders", "", headers, b'{"quantity":1}', "t", b"r")
    request.params = {"id": str(sale_id)}
    try:
        answer = purchases.handle(request)
        done: Response = await answer if inspect.isawaitable(answer) else answer
    except Problem as problem:
        return problem.status, problem.kind
    status, _, body = done
    return status, json.loads(body)


async def test_a_lost_commit_answer_replays(purchases: tuple[Purchases, AnswerLost, Gate]) -> None:
    made, sales, gate = purchases
    now = datetime.now(UTC)
    sale = await sales.create_sale(
        NewSale("t", 5, 1, now - timedelta(minutes=1), now + timedelta(hours=1)), now
    )
    await made.keeper.sale(sale.id)
    sales.lose = 1
    assert await _buy(made, sale.id, "alice", "k1") == (503, "unavailable")  # yet committed
    stored = await sales.order_by_key("alice", "k1")
    assert stored is not None
    # another attempt of the same user, in flight when the retry comes: it holds the limit
    other = await gate.reserve(sale.id, "alice", "k2", 1, "elsewhere")
    assert other.outcome == "ok"
    status, body = await _buy(made, sale.id, "alice", "k1")
    assert status == 201, body
    assert body["id"] == stored[0].id


async def _sale(sales: SqlSales, stock: int) -> Sale:
    now = datetime.now(UTC)
    new = NewSale("t", stock, 1, now - timedelta(minutes=1), now + timedelta(hours=1))
    return await sales.create_sale(new, now)


async def test_an_uncertain_key_that_did_not_commit_buys(
    purchases: tuple[Purchases, AnswerLost, Gate],
) -> None:
    made, sales, gate = purchases
    sale = await _sale(sales, stock=5)
    await made.keeper.sale(sale.id)
    wanted = fingerprint(sale.id, 1)
    assert (await gate.reserve(sale.id, "bob", "k", 1, "f")).outcome == "ok"
    await gate.release(sale.id, "bob", "k", 1, True, "f")  # its commit died unheard
    status, body = await _buy(made, sale.id, "bob", "k")
    assert status == 422  # another request with this key: the fingerprint differs
    assert (await gate.reserve(sale.id, "carol", "k", 1, wanted)).outcome == "ok"
    await gate.release(sale.id, "carol", "k", 1, True, wanted)
    status, body = await _buy(made, sale.id, "carol", "k")  # not in the database: buys
    assert status == 201, body


async def test_a_win_whose_request_gave_up_is_not_committed_later(
    purchases: tuple[Purchases, AnswerLost, Gate],
) -> None:
    """Found by review: a winner still queued behind a stalled batch when its request gave
    up (503, stock back) was committed once the database recovered, on stock others had
    bought meanwhile; its retry had been refused 409 sold-out by then."""
    made, sales, gate = purchases
    sale = await _sale(sales, stock=2)
    await made.keeper.sale(sale.id)
    sales.stall = go = asyncio.Event()
    zed = asyncio.create_task(_buy(made, sale.id, "zed", "kz"))  # its batch stalls
    await asyncio.sleep(0.05)
    alice = asyncio.create_task(_buy(made, sale.id, "alice", "ka"))  # queued behind it
    assert await zed == (503, "unavailable")
    assert await alice == (503, "unavailable")  # "may or may not be stored"
    assert await gate.remaining(sale.id) == 2  # the stock is back
    # alice retries while the database is still stuck: stock is there, so it queues
    # again, and gives up again (never a final answer)
    assert await _buy(made, sale.id, "alice", "ka") == (503, "unavailable")
    go.set()  # the database recovers: zed's stalled batch lands after all
    await asyncio.sleep(0.2)
    zed_order = await sales.order_by_key("zed", "kz")
    assert zed_order is not None
    assert await sales.order_by_key("alice", "ka") is None  # never committed behind her back
    # the gate got zed's stock back and over-admits by one: the database refuses the extra
    assert (await _buy(made, sale.id, "carol", "kc"))[0] == 201
    assert await _buy(made, sale.id, "dave", "kd") == (409, "sold-out")
    # sold out now, and alice's key may not get a final refusal while a commit could land
    assert await _buy(made, sale.id, "alice", "ka") == (409, "key-in-flight")
    replay = await _buy(made, sale.id, "zed", "kz")  # the late commit replays
    assert replay[0] == 201 and replay[1]["id"] == zed_order[0].id


async def test_a_lost_answer_after_the_gate_was_lost_stays_uncertain(
    purchases: tuple[Purchases, AnswerLost, Gate],
) -> None:
    """Found by review: the gate rebuilt (Redis restarted) while a commit was in flight
    has no pending entry to make uncertain; the key must be written as uncertain."""
    made, sales, gate = purchases
    sale = await _sale(sales, stock=1)
    await made.keeper.sale(sale.id)
    wanted = fingerprint(sale.id, 1)
    await gate.release(sale.id, "alice", "k", 1, True, wanted)  # no entry: written anyway
    assert (await gate.reserve(sale.id, "alice", "k", 1, wanted)).outcome == "uncertain"
    assert await gate.remaining(sale.id) == 1  # it holds no stock
    assert await gate.keys(sale.id) == {"alice|k"}
