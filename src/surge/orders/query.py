"""GET /orders/{id}: near cache -> shared cache (Redis) -> database, in that order.

The whole path, as a request sees it:
1. `handle`: token (cached verification), id check, near-cache lookup. A near-cache hit
   answers synchronously with a response encoded when the entry was filled: no Task, no
   await, no I/O. Everything below runs only on a near-cache miss.
2. `_wait`: the request joins the flight of its id (single-flight: however many requests
   want one id, it is looked up once) and gets a future plus a deadline timer. Past the
   deadline the future is answered 504 at once. A miss costs one Future and one timer,
   not a Task: the server completes the response from the future's callback.
3. `_lookup`: one MGET on the shared cache for every id asked for since the last one,
   at most `CACHE_READS` at once (ids missed meanwhile wait for the next). The ids still
   missing join the database queue.
4. `_pump`: at most `db_pool_size` queries at once, each one `SELECT ... WHERE id IN
   (...)` for everything queued when it starts (up to 500 ids). While every connection
   is busy the queue grows, so batches grow with the load: a one-id query costs about
   the CPU of a 20-id one, in Python and in the database (docs/decisions.md, 16). Ids
   whose waiters have all given up before their query starts are dropped (the work is
   cancelled); a query already running completes and fills the caches, so a deadline
   storm cannot starve them.
5. `_fill`: the result goes into the near cache at once and into the shared cache in the
   background (`set_soon`, TTL with jitter); a not-found is cached too, briefly.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import orjson

from surge.auth import Authenticator
from surge.ground.admission import overloaded
from surge.ground.evict import evict_oldest
from surge.ground.interfaces import Bus, Cache, Store
from surge.ground.orders import Order
from surge.ground.paging import parse_id
from surge.ground.tasks import Tasks
from surge.ground.web import Request, Response, dumps, problem_response, response
from surge.orders.flights import Flight, OrderQueryOptions, OrderStats, live_batch
from surge.orders.near import Entry, NearCache
from surge.protect.shedder import Shedder

log = logging.getLogger("surge.orders")

INVALIDATE_CHANNEL = "orders.invalidate"
NOT_FOUND = problem_response(404, "order-not-found", "no such order")
NEGATIVE = b""  # the shared-cache value of an id known not to exist
UNAVAILABLE = problem_response(
    503, "unavailable", "the order store is unavailable", (("retry-after", "1"),)
)
# Shared-cache reads (MGETs) under way at once, per process; ids missed meanwhile wait
# and go together in the next. Each read costs redis-py about as much for one key as
# for a hundred, and a cold start's loop turns are short: one read a turn was thousands
# of small MGETs a second. Good answers in 40 s of cold start, by this bound: 1.42-1.60M
# with 1, 1.52M with 2, 1.13-1.39M with 4, 1.07M with 16, about 1.03M unbounded. 2 rather
# than 1 so that one slow reply does not hold up every lookup behind it.
CACHE_READS = 2
# Orders change after their purchase (paid, cancelled, expired): a read begun before a
# change may answer after its invalidation. Each process remembers when it last heard of
# each order's change (this many orders at most) and caches nothing read before that.
INVALIDATED_BOUND = 100_000
# ... and a change is invalidated once more this long after it, for a process whose stale
# fill landed before the first invalidation reached it (in the shared cache, for others)
SETTLE_AFTER = 1.0


def encode_order(order: Order) -> bytes:
    fields = {
        "id": order.id,
        "sale_id": order.sale_id,
        "user_id": order.user_id,
        "quantity": order.quantity,
        "status": order.status,
        "created_at": order.created_at.isoformat().replace("+00:00", "Z"),
    }
    if order.pay_by is not None and order.status == "pending":  # until when it may be paid
        fields["pay_by"] = order.pay_by.isoformat().replace("+00:00", "Z")
    return dumps(fields)


class OrderQuery:
    def __init__(
        self,
        options: OrderQueryOptions,
        auth: Authenticator,
        cache: Cache,
        store: Store,
        bus: Bus,
        stats: OrderStats,
        shedder: Shedder | None = None,  # a miss takes one of its slots
    ) -> None:
        self._auth = auth
        self._cache = cache
        self._store = store
        self._bus = bus
        self.stats = stats
        self._shedder = shedder
        self._deadline = options.deadline
        self._deadline_response = problem_response(
            504, "deadline-exceeded", f"no answer within {self._deadline * 1000:.0f} ms"
        )
        self._ttl = options.cache_ttl
        self._jitter = options.cache_jitter
        self._negative_ttl = options.negative_ttl
        self.near = NearCache(options.near_cache_size, options.near_cache_ttl)
        self._flights: dict[int, Flight] = {}
        self._queue: list[Flight] = []  # near-cache misses waiting for a shared-cache read
        self._cache_reads = CACHE_READS
        self._cache_busy = 0  # shared-cache reads under way
        self._db_queue: list[Flight] = []  # missed the shared cache, waiting for a query
        self._db_size = store.size
        self._db_busy = 0  # queries running
        self._invalidated: dict[int, float] = {}  # order -> monotonic time of its last change
        self._tasks = Tasks()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._bus.subscribe(INVALIDATE_CHANNEL, self._on_invalidate)
        # invalidations may have been lost while the bus was down: forget everything
        self._bus.on_reconnect(self.near.clear)

    async def close(self) -> None:
        self._db_size = self._cache_reads = 0  # work cancelled now starts no other
        await self._tasks.cancel()
        # a lookup cancelled before it started never answered its waiters: 503 now,
        # rather than a 504 at their deadline
        self._fail_all(list(self._flights.values()))
        self._queue.clear()
        self._db_queue.clear()

    # -- the request path ---------------------------------------------------------------------
    def handle(self, request: Request) -> Response | asyncio.Future[Response]:
        user = self._auth.user(request.headers.get(b"authorization"))
        order_id = parse_id(request.params["id"])
        now = time.monotonic()
        entry = self.near.get(order_id, now)
        if entry is None:
            self.stats.cache_misses["near"] += 1
            shedder = self._shedder
            if (
                shedder is not None
                and order_id not in self._flights  # joining a lookup under way is free
                and not shedder.take(request, "read")
            ):
                return overloaded()  # before the lookup: under overload it never starts
            return self._wait(order_id, user.id, user.admin)
        self.stats.cache_hits["near"] += 1
        if entry[2] < now:
            self._refresh(order_id)  # ageing: answer from it, reload it behind the scenes
        return _answer(entry, user.id, user.admin)

    def _wait(self, order_id: int, user_id: str, admin: bool) -> asyncio.Future[Response]:
        loop = self._loop
        flight = self._flights.get(order_id)
        if flight is None:
            flight = self._flights[order_id] = Flight(order_id)
            self._queue.append(flight)
            if len(self._queue) == 1:
                loop.call_soon(self._dispatch)
        waiter: asyncio.Future[Response] = loop.create_future()
        timer = loop.call_later(self._deadline, self._expire, waiter, flight)
        flight.waiters.append((waiter, user_id, admin, timer))
        flight.live += 1
        return waiter

    def _refresh(self, order_id: int) -> None:
        if order_id in self._flights:
            return
        flight = self._flights[order_id] = Flight(order_id)
        flight.live = 1  # nobody waits, but the lookup must not be skipped
        self._queue.append(flight)
        if len(self._queue) == 1:
            self._loop.call_soon(self._dispatch)

    def _expire(self, waiter: asyncio.Future[Response], flight: Flight) -> None:
        if waiter.done():
            return
        self.stats.deadline_exceeded += 1
        waiter.set_result(self._deadline_response)
        flight.live -= 1
        if flight.live == 0 and not flight.started and self._flights.get(flight.order_id) is flight:
            del self._flights[flight.order_id]  # nobody waits: the lookup is skipped

    def _dispatch(self) -> None:
        while self._cache_busy < self._cache_reads and self._queue:
            batch, self._queue = live_batch(self._queue)
            if not batch:
                return
            self._cache_busy += 1
            self._tasks.spawn(self._guarded(batch), shared=False)

    async def _guarded(self, batch: list[Flight]) -> None:
        try:
            await self._lookup(batch)
        except Exception:  # a bug: answer 503 now rather than let waiters run into 504
            log.exception("order lookup batch failed")
            self._fail_all(batch)
        finally:
            self._cache_busy -= 1
            self._dispatch()  # what was asked for meanwhile, in one read

    async def _lookup(self, batch: list[Flight]) -> None:
        stats = self.stats
        batch = [f for f in batch if f.live]
        if not batch:
            return
        began = time.monotonic()
        try:
            values = await self._cache.get_many([f"order:{f.order_id}" for f in batch])
        except Exception as exc:  # Redis trouble: degrade to the database, skip the fill
            stats.cache_errors += 1
            log.debug("shared cache read failed: %s", exc)
            values = [None] * len(batch)
            for flight in batch:
                flight.fill_shared = False
        missing = 0
        raced = self._raced(batch, began) if self._invalidated else ()
        for flight, value in zip(batch, values, strict=True):
            if flight.order_id in raced:
                value = None  # read before the order changed: the database's instead
            entry = None if value is None else self._entry_from_bytes(flight.order_id, value)
            if entry is None:
                self._db_queue.append(flight)
                missing += 1
            else:
                self._resolve(flight, entry)
        stats.cache_hits["shared"] += len(batch) - missing
        stats.cache_misses["shared"] += missing
        if missing:
            self._pump()

    def _pump(self) -> None:
        """Starts a query for what is queued, while a connection is free."""
        while self._db_busy < self._db_size and self._db_queue:
            batch, self._db_queue = live_batch(self._db_queue)
            if not batch:
                return
            for flight in batch:
                flight.started = True
            self._db_busy += 1
            self._tasks.spawn(self._query(batch), shared=False)

    async def _query(self, batch: list[Flight]) -> None:
        began = time.monotonic()
        try:
            try:
                found = await self._store.get_orders([f.order_id for f in batch])
            except Exception as exc:
                log.warning("order lookup failed: %s", exc)
                self._fail_all(batch)
                return
            self.stats.db_queries += 1
            self.stats.db_rows += len(found)
            raced = self._raced(batch, began) if self._invalidated else ()
            for flight in batch:
                order = found.get(flight.order_id)
                if flight.order_id in raced:  # it answers its waiters, and is not kept
                    entry = self._fill(flight.order_id, order, False)
                    self.near.drop(flight.order_id)
                else:
                    entry = self._fill(flight.order_id, order, flight.fill_shared)
                self._resolve(flight, entry)
        except Exception:  # a bug: answer 503 now rather than let waiters run into 504
            log.exception("order query batch failed")
            self._fail_all(batch)
        finally:
            self._db_busy -= 1
            self._pump()

    def _resolve(self, flight: Flight, entry: Entry) -> None:
        if self._flights.get(flight.order_id) is flight:
            del self._flights[flight.order_id]
        for waiter, user_id, admin, timer in flight.waiters:
            if not waiter.done():
                timer.cancel()
                waiter.set_result(_answer(entry, user_id, admin))

    def _fail_all(self, flights: list[Flight]) -> None:
        for flight in flights:
            self._fail(flight)

    def _fail(self, flight: Flight) -> None:
        if self._flights.get(flight.order_id) is flight:
            del self._flights[flight.order_id]
        for waiter, _, _, timer in flight.waiters:
            if not waiter.done():
                timer.cancel()
                waiter.set_result(UNAVAILABLE)

    def _raced(self, batch: list[Flight], began: float) -> set[int]:
        """The orders of `batch` that changed after `began` (a read begun before)."""
        changed = self._invalidated
        return {f.order_id for f in batch if changed.get(f.order_id, 0.0) >= began}

    def _changed(self, order_ids: tuple[int, ...] | list[int]) -> None:
        now = time.monotonic()
        changed = self._invalidated
        for order_id in order_ids:
            self.near.drop(order_id)
            changed.pop(order_id, None)  # re-inserted last: the dict stays in time order
            changed[order_id] = now
        if len(changed) > INVALIDATED_BOUND:
            evict_oldest(changed, INVALIDATED_BOUND)
        self._store.changed(order_ids)  # no replica answers them until it has the write

    def _fill(self, order_id: int, order: Order | None, fill_shared: bool) -> Entry:
        """Caches a database answer: near cache now, shared cache in the background."""
        if order is None:
            entry = self.near.put(order_id, None, None, self._negative_ttl)
            body = NEGATIVE
            ttl = self._negative_ttl
        else:
            body = encode_order(order)
            entry = self.near.put(order_id, order.user_id, response(200, body), self.near.ttl)
            ttl = self._ttl * (1.0 + random.uniform(-self._jitter, self._jitter))
        if fill_shared and ttl > 0:
            self._cache.set_soon(f"order:{order_id}", body, ttl)
        return entry

    def _entry_from_bytes(self, order_id: int, value: bytes) -> Entry | None:
        """The near-cache entry for a shared-cache value; None if the value is unreadable
        (then the database answers and overwrites it)."""
        if value == NEGATIVE:
            return self.near.put(order_id, None, None, self._negative_ttl)
        try:
            owner = orjson.loads(value)["user_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("order %d: unreadable shared-cache value ignored", order_id)
            return None
        return self.near.put(order_id, owner, response(200, value), self.near.ttl)

    # -- writes elsewhere call this -----------------------------------------------------------
    async def invalidate(self, *order_ids: int, settle: bool = False) -> None:
        """Forgets orders everywhere: shared cache, and every process's near cache; one
        DEL and one message for all of them (a message is comma-separated ids). With
        `settle` (an order that changed, not a new one) once more SETTLE_AFTER later."""
        if not order_ids:
            return
        self._changed(order_ids)
        await self._cache.delete(*(f"order:{order_id}" for order_id in order_ids))
        await self._bus.publish(INVALIDATE_CHANNEL, ",".join(map(str, order_ids)).encode())
        if settle:
            self._tasks.spawn(self._settle(order_ids), shared=False)

    async def _settle(self, order_ids: tuple[int, ...]) -> None:
        await asyncio.sleep(SETTLE_AFTER)
        try:
            await self.invalidate(*order_ids)
        except Exception as exc:  # best effort, as the first: the TTL bounds the rest
            log.warning("orders %s: second invalidation failed: %s", order_ids, exc)

    def _on_invalidate(self, message: bytes) -> None:
        try:
            order_ids = [int(part) for part in message.split(b",")]
        except ValueError:
            log.warning("ignored malformed invalidation %r", message[:64])
            return
        self._changed(order_ids)


def _answer(entry: Entry, user_id: str, admin: bool) -> Response:
    owner, found, _, _ = entry
    if found is None or (owner != user_id and not admin):
        return NOT_FOUND  # someone else's order is indistinguishable from a missing one
    return found
