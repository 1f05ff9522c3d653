"""GET /orders/{id}: near cache -> shared cache (Redis) -> database, in that order.

The whole path, as a request sees it:
1. `handle`: token (cached verification), id check, near-cache lookup. A near-cache hit
   answers synchronously with a response encoded when the entry was filled: no Task, no
   await, no I/O. Everything below runs only on a near-cache miss.
2. `_slow`: the request's deadline starts; past it the client gets 504 and its share of
   the work is cancelled.
3. `_flight`: single-flight; every request for an id already being loaded waits on the
   same load, so a stampede on one id costs one shared-cache read and at most one query.
4. `_fetch`: the shared cache (reads of one loop turn batched into one MGET), then the
   database (ids of one loop turn batched into one SELECT ... IN), under the pool bound.
5. The result fills the near cache at once and the shared cache in the background
   (`set_soon`, TTL with jitter); a not-found is cached too, briefly (negative caching).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable

import orjson

from surge.auth import Authenticator
from surge.config import Settings
from surge.http.response import Problem, Response, problem_response
from surge.http.server import Request
from surge.metrics import Metrics
from surge.types import Bus, Cache, Order, Store

log = logging.getLogger("surge.orders")

INVALIDATE_CHANNEL = "orders.invalidate"
MAX_ID = 2**63 - 1
NOT_FOUND = problem_response(404, "order-not-found", "no such order")
NEGATIVE = b""  # the shared-cache value of an id known not to exist


class Entry:
    """A near-cache entry: the owner and the encoded 200 (owner None: known absent)."""

    __slots__ = ("expires", "owner", "response")

    def __init__(self, owner: str | None, response: Response | None, expires: float) -> None:
        self.owner = owner
        self.response = response
        self.expires = expires


class NearCache:
    """Bounded in-process cache; oldest-inserted entries leave first when it is full."""

    def __init__(self, max_entries: int, ttl: float) -> None:
        self._data: dict[int, Entry] = {}
        self._max = max_entries
        self.ttl = ttl

    def get(self, key: int) -> Entry | None:
        entry = self._data.get(key)
        if entry is not None and entry.expires < time.monotonic():
            del self._data[key]
            return None
        return entry

    def put(self, key: int, entry: Entry) -> None:
        data = self._data
        data.pop(key, None)
        if len(data) >= self._max:
            del data[next(iter(data))]
        data[key] = entry

    def drop(self, key: int) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


def parse_order_id(text: str) -> int:
    """A positive integer id in canonical ASCII digits; anything else is a 400."""
    if not (0 < len(text) <= 19 and text.isascii() and text.isdigit()):
        raise Problem(400, "bad-order-id", "order id must be a positive integer")
    value = int(text)
    if not 0 < value <= MAX_ID:
        raise Problem(400, "bad-order-id", "order id must be a positive integer")
    return value


def encode_order(order: Order) -> bytes:
    return orjson.dumps({
        "id": order.id,
        "sale_id": order.sale_id,
        "user_id": order.user_id,
        "quantity": order.quantity,
        "status": order.status,
        "created_at": order.created_at.isoformat().replace("+00:00", "Z"),
    })


class OrderQuery:
    def __init__(self, settings: Settings, auth: Authenticator, cache: Cache, store: Store,
                 bus: Bus, metrics: Metrics) -> None:
        self._auth = auth
        self._cache = cache
        self._store = store
        self._bus = bus
        self._metrics = metrics
        self._deadline = settings.deadline
        self._ttl = settings.cache_ttl
        self._jitter = settings.cache_jitter
        self._negative_ttl = settings.negative_ttl
        self.near = NearCache(settings.near_cache_size, settings.near_cache_ttl)
        self._flights: dict[int, tuple[asyncio.Task[Entry], list[int]]] = {}
        self._db = BatchLoader(store, metrics)

    async def start(self) -> None:
        await self._bus.subscribe(INVALIDATE_CHANNEL, self._on_invalidate)

    # -- the request path ---------------------------------------------------------------------
    def handle(self, request: Request) -> Response | Awaitable[Response]:
        user = self._auth.user(request.headers.get(b"authorization"))
        order_id = parse_order_id(request.params["id"])
        entry = self.near.get(order_id)
        if entry is None:
            self._metrics.cache_misses["near"] += 1
            return self._slow(order_id, user.id, user.admin)
        self._metrics.cache_hits["near"] += 1
        return _answer(entry, user.id, user.admin)

    async def _slow(self, order_id: int, user_id: str, admin: bool) -> Response:
        try:
            async with asyncio.timeout(self._deadline):
                entry = await self._flight(order_id)
        except TimeoutError:
            self._metrics.deadline_exceeded += 1
            raise Problem(504, "deadline-exceeded",
                          f"no answer within {self._deadline * 1000:.0f} ms") from None
        except Exception as exc:  # the database failed (the cache already degraded to it)
            log.warning("order %d: database read failed: %s", order_id, exc)
            raise Problem(503, "unavailable", "the order store is unavailable",
                          (("retry-after", "1"),)) from None
        return _answer(entry, user_id, admin)

    async def _flight(self, order_id: int) -> Entry:
        """Joins (or starts) the one load of this id; the last waiter to leave cancels it."""
        flight = self._flights.get(order_id)
        if flight is None:
            task = asyncio.get_running_loop().create_task(self._fetch(order_id))
            flight = self._flights[order_id] = (task, [0])
            task.add_done_callback(lambda _: self._flights.pop(order_id, None))
        task, waiters = flight
        waiters[0] += 1
        try:
            return await asyncio.shield(task)
        finally:
            waiters[0] -= 1
            if waiters[0] == 0 and not task.done():
                task.cancel()  # nobody wants it any more: abandon the Redis/DB work

    async def _fetch(self, order_id: int) -> Entry:
        key = f"order:{order_id}"
        metrics = self._metrics
        try:
            cached = await self._cache.get(key)
        except Exception as exc:  # Redis trouble: degrade to the database
            metrics.cache_errors += 1
            log.debug("shared cache read failed: %s", exc)
            cached = None
            fill_shared = False
        else:
            fill_shared = True
        if cached is not None:
            metrics.cache_hits["shared"] += 1
            entry = self._entry_from_bytes(cached)
            self.near.put(order_id, entry)
            return entry
        metrics.cache_misses["shared"] += 1
        order = await self._db.load(order_id)
        if order is None:
            entry = Entry(None, None, time.monotonic() + min(self._negative_ttl, self.near.ttl))
            body = NEGATIVE
            ttl = self._negative_ttl
        else:
            body = encode_order(order)
            entry = Entry(order.user_id, Response(200, body), time.monotonic() + self.near.ttl)
            ttl = self._ttl * (1.0 + random.uniform(-self._jitter, self._jitter))
        self.near.put(order_id, entry)
        if fill_shared and ttl > 0:
            self._cache.set_soon(key, body, ttl)
        return entry

    def _entry_from_bytes(self, value: bytes) -> Entry:
        now = time.monotonic()
        if value == NEGATIVE:
            return Entry(None, None, now + min(self._negative_ttl, self.near.ttl))
        owner = orjson.loads(value)["user_id"]
        return Entry(owner, Response(200, value), now + self.near.ttl)

    # -- writes elsewhere call this -----------------------------------------------------------
    async def invalidate(self, order_id: int) -> None:
        """Forgets an order everywhere: shared cache, and every process's near cache."""
        self.near.drop(order_id)
        await self._cache.delete(f"order:{order_id}")
        await self._bus.publish(INVALIDATE_CHANNEL, str(order_id).encode())

    def _on_invalidate(self, message: bytes) -> None:
        try:
            self.near.drop(int(message))
        except ValueError:
            log.warning("ignored malformed invalidation %r", message[:64])


def _answer(entry: Entry, user_id: str, admin: bool) -> Response:
    if entry.response is None or (entry.owner != user_id and not admin):
        return NOT_FOUND  # someone else's order is indistinguishable from a missing one
    return entry.response


class BatchLoader:
    """Collects the ids asked for in one loop turn and reads them with one query.

    A batch's query is cancelled when every request waiting on it has gone (deadline).
    """

    MAX_BATCH = 500

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics
        self._pending: dict[int, asyncio.Future[Order | None]] = {}

    def load(self, order_id: int) -> asyncio.Future[Order | None]:
        future = self._pending.get(order_id)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._pending[order_id] = loop.create_future()
            if len(self._pending) == 1:
                loop.call_soon(self._dispatch)
        return future

    def _dispatch(self) -> None:
        pending, self._pending = self._pending, {}
        items = list(pending.items())
        for start in range(0, len(items), self.MAX_BATCH):
            batch = dict(items[start:start + self.MAX_BATCH])
            task = asyncio.get_running_loop().create_task(self._run(batch))
            live = [len(batch)]

            def gone(future: asyncio.Future[Order | None], task: asyncio.Task[None] = task,
                     live: list[int] = live) -> None:
                if future.cancelled():
                    live[0] -= 1
                    if live[0] == 0:
                        task.cancel()

            for future in batch.values():
                future.add_done_callback(gone)

    async def _run(self, batch: dict[int, asyncio.Future[Order | None]]) -> None:
        try:
            found = await self._store.get_orders(list(batch))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            for future in batch.values():
                if not future.done():
                    future.set_exception(exc)
            return
        self._metrics.db_queries += 1
        self._metrics.db_rows += len(found)
        for order_id, future in batch.items():
            if not future.done():
                future.set_result(found.get(order_id))
