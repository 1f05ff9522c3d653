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
from surge.backends.redis import connect
from surge.backends.redis_gate import RedisGate
from surge.backends.sql import create_engine
from surge.backends.sql_sales import Purchase, SqlSales, Win
from surge.feed import StockFeed
from surge.gate import Gate, MemoryGate
from surge.http.request import Request
from surge.http.response import Problem, Response
from surge.purchase import Purchases
from surge.sale_cache import SaleConfigs, SoldOutBoard
from surge.sales import NewSale, Sale
from tests.backends import Backend

pytestmark = pytest.mark.anyio
SECRET = "contract-secret-0123456789abcdef-0123"


class _Rooms:
    async def publish(self, room: str, data: bytes) -> None:
        pass


class AnswerLost(SqlSales):
    """Commits for real, then loses the answer of the next `lose` batches."""

    lose = 0

    async def purchase_many(
        self, sale: Sale, wins: list[Win], now: datetime
    ) -> list[Purchase | Exception]:
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
        {},
        5.0,
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


async def test_an_uncertain_key_that_did_not_commit_buys(
    purchases: tuple[Purchases, AnswerLost, Gate],
) -> None:
    made, sales, gate = purchases
    now = datetime.now(UTC)
    sale = await sales.create_sale(
        NewSale("t", 5, 1, now - timedelta(minutes=1), now + timedelta(hours=1)), now
    )
    await made.keeper.sale(sale.id)
    assert (await gate.reserve(sale.id, "bob", "k", 1, "f")).outcome == "ok"
    await gate.release(sale.id, "bob", "k", 1, uncertain=True)  # its commit died unheard
    status, body = await _buy(made, sale.id, "bob", "k")
    assert status == 422  # another request with this key: the fingerprint differs
    assert (await gate.reserve(sale.id, "carol", "k", 1, "f")).outcome == "ok"
    await gate.release(sale.id, "carol", "k", 1, uncertain=True)
    await gate.forget(sale.id, "carol", "k")
    status, body = await _buy(made, sale.id, "carol", "k")
    assert status == 201, body
