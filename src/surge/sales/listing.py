"""GET /sales: the sales not ended yet, newest first, a page at a time (anyone).

The steps, in the order the code runs them:
1. `?cursor=ID&limit=N` parsed (bad values: 400 `bad-cursor-id` / `bad-limit`);
2. the page answered from this process's cache if it was built in the last second;
3. else one build per page and moment, shared by every request that misses meanwhile:
   one database query (`Sales.sales_page`), then each sale's remaining stock from the
   gate, as GET /sales/{id} gives it (the row's count when the gate cannot say);
4. the answer `{"items": [sales], "next": cursor-or-null}` is kept for a second.

So a crowd opening the demo page costs one query a second per page and process, whatever
its size: the page's live numbers come over the WebSocket anyway (`sale:ID` rooms).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime

from surge.ground.evict import evict_oldest
from surge.ground.interfaces import Gate, Sales
from surge.ground.paging import parse_page as paged
from surge.ground.sales import Sale
from surge.ground.tasks import shared_task
from surge.ground.web import Request, Response, json_response
from surge.protect.deadlines import within

LIST_TTL = 1.0  # seconds a built page is served as it is
MAX_PAGES = 1_000  # pages cached per process (distinct cursor and limit pairs)
PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

_Key = tuple[int | None, int]  # (cursor, limit)


class SaleList:
    def __init__(self, sales: Sales, gate: Gate, deadline: float) -> None:
        self._sales = sales
        self._gate = gate
        self._deadline = deadline
        self._pages: dict[_Key, tuple[float, Response]] = {}
        self._building: dict[_Key, asyncio.Task[Response]] = {}

    def handle(self, request: Request) -> Response | Awaitable[Response]:
        key = parse_page(request.query)
        cached = self._pages.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        return within(self._deadline, self._shared_build(key))

    async def _shared_build(self, key: _Key) -> Response:
        building = self._building.get(key)
        if building is None:
            building = shared_task(self._build(key))
            self._building[key] = building
            building.add_done_callback(lambda _: self._building.pop(key, None))
        # a request cut off by its deadline leaves the build to the others
        return await asyncio.shield(building)

    async def _build(self, key: _Key) -> Response:
        before, limit = key
        now = datetime.now(UTC)
        found = await self._sales.sales_page(now, before, limit + 1)
        items = found[:limit]
        remaining = await asyncio.gather(
            *(self._gate.remaining(s.id) for s in items), return_exceptions=True
        )
        body = {
            "items": [_view(sale, left, now) for sale, left in zip(items, remaining, strict=True)],
            "next": str(items[-1].id) if len(found) > limit else None,
        }
        built = json_response(200, body)
        if len(self._pages) >= MAX_PAGES:
            evict_oldest(self._pages, MAX_PAGES)
        self._pages[key] = (time.monotonic() + LIST_TTL, built)
        return built


def _view(sale: Sale, counted: int | BaseException | None, now: datetime) -> dict[str, object]:
    """The gate's count (it includes reservations being committed); when the gate holds no
    state for the sale or cannot be reached, the row's, read a moment ago."""
    return sale.to_json(now, counted if isinstance(counted, int) else None)


def parse_page(query: str) -> _Key:
    """`?cursor=ID&limit=N`: sales with ids below ID (newest first), N per page."""
    return paged(query, PAGE_SIZE, MAX_PAGE_SIZE)
