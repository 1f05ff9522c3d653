"""POST /sales/{id}/orders: the flash-sale purchase, top to bottom.

1. Cheap refusals first, without I/O: token (401), sale id (400), Idempotency-Key (400),
   body (400/422), the sale's config from an in-process cache (404, 403 when not live),
   and the process-wide sold-out board (409): once a sale is sold out every process knows
   it (pub/sub), so the flood of late buyers costs no Redis or database round trip.
2. The gate (`surge.gate`) decides in one atomic step: ok / sold_out / limit / in_flight /
   done (replay) / mismatch (422).
3. A reservation is committed by one database transaction (`SqlSales.purchase`) that
   re-checks stock, limit and key; 201 only after it committed. Whatever fails after the
   reservation gives it back to the gate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from surge.auth import Authenticator
from surge.backends.sql_sales import Purchase, SqlSales, Win
from surge.commits import AfterCommit, CommitBatcher
from surge.deadlines import within
from surge.feed import StockFeed
from surge.gate import Answer, Confirmed, Gate
from surge.http.request import Request
from surge.http.response import JSON, Problem, Response, problem_response, response
from surge.logs import shared_task
from surge.orders import encode_order, parse_id
from surge.sales import Sale, fingerprint, parse_idempotency_key, parse_quantity
from surge.types import Bus, Order

log = logging.getLogger("surge.purchase")

SOLD_OUT_CHANNEL = "sales.sold_out"
RESTOCKED_CHANNEL = "sales.restocked"
SOLD_OUT = problem_response(409, "sold-out", "the sale is sold out")


class SaleConfigs:
    """Sales by id, cached in-process: a sale's config never changes once created, so it is
    kept for good (bounded); "no such sale" is remembered for a second only, since another
    process may create it. Concurrent misses for one id share one query."""

    MAX = 10_000
    ABSENT_TTL = 1.0

    def __init__(self, sales: SqlSales) -> None:
        self._sales = sales
        self._known: dict[int, Sale] = {}
        self._absent: dict[int, float] = {}
        self._loading: dict[int, asyncio.Future[Sale | None]] = {}

    def cached(self, sale_id: int) -> Sale | None:
        return self._known.get(sale_id)

    async def get(self, sale_id: int) -> Sale | None:
        sale = self._known.get(sale_id)
        if sale is not None:
            return sale
        if self._absent.get(sale_id, 0.0) > time.monotonic():
            return None
        loading = self._loading.get(sale_id)
        if loading is None:
            loading = shared_task(self._sales.get_sale(sale_id))
            self._loading[sale_id] = loading
            loading.add_done_callback(lambda _: self._loading.pop(sale_id, None))
        sale = await asyncio.shield(loading)
        if sale is None:
            self._remember_absent(sale_id)
        else:
            if len(self._known) >= self.MAX:
                self._known.clear()
            self._known[sale_id] = sale
        return sale

    def _remember_absent(self, sale_id: int) -> None:
        """Kept in the order they expire (one TTL for all: insertion order), so those
        expired are dropped from the front as new ones come; at most MAX either way
        (every unknown id read once added an entry for good: issue 12 #8)."""
        absent = self._absent
        now = time.monotonic()
        absent.pop(sale_id, None)  # re-inserted last: its new expiry is the latest
        while absent and (next(iter(absent.values())) <= now or len(absent) >= self.MAX):
            del absent[next(iter(absent))]
        absent[sale_id] = now + self.ABSENT_TTL


class SoldOutBoard:
    """Sale ids known sold out, so the flood of late buyers is refused from memory.

    A mark lasts `HOLD` seconds, then the next buyer asks the gate again (and marks anew if
    still sold out): stock given back by a failed commit reaches buyers within `HOLD`
    even if a "restocked" message raced a late "sold out" one, and nothing can stay
    wrongly sold out. Marks travel between processes by pub/sub.
    """

    HOLD = 1.0

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._until: dict[int, float] = {}

    async def start(self) -> None:
        await self._bus.subscribe(SOLD_OUT_CHANNEL, lambda m: self._hold(int(m)))
        await self._bus.subscribe(RESTOCKED_CHANNEL, lambda m: self._release(int(m)))
        self._bus.on_reconnect(self._until.clear)  # missed news: ask the gate again

    def __contains__(self, sale_id: int) -> bool:
        until = self._until.get(sale_id)
        return until is not None and until > time.monotonic()

    def _release(self, sale_id: int) -> None:
        self._until.pop(sale_id, None)

    def _hold(self, sale_id: int) -> None:
        self._until[sale_id] = time.monotonic() + self.HOLD

    async def mark(self, sale_id: int) -> None:
        fresh = sale_id not in self
        self._hold(sale_id)
        if fresh:
            await self._bus.publish(SOLD_OUT_CHANNEL, str(sale_id).encode())

    async def unmark(self, sale_id: int) -> None:
        self._release(sale_id)
        await self._bus.publish(RESTOCKED_CHANNEL, str(sale_id).encode())


class _Unknown(Exception):
    """A commit outlived the deadline and its grace: whether it landed is unknown."""


def _problem_409(kind: str, detail: str) -> Problem:
    return Problem(409, kind, detail)


class Purchases:
    def __init__(
        self,
        auth: Authenticator,
        sales: SqlSales,
        gate: Gate,
        configs: SaleConfigs,
        board: SoldOutBoard,
        feed: StockFeed,
        outcomes: dict[str, int],
        deadline: float,
        ordered: Callable[..., Awaitable[None]],
    ) -> None:
        self._auth = auth
        self._sales = sales
        self._gate = gate
        self._configs = configs
        self._board = board
        self._feed = feed
        self._outcomes = outcomes  # purchases_total{outcome} (surge.metrics)
        self._deadline = deadline
        self._ordered = ordered  # the order query forgets what it cached for a new id
        self._batcher = CommitBatcher(sales)
        self._books = AfterCommit(gate, ordered)
        self._rebuilding: dict[int, asyncio.Future[None]] = {}

    def handle(self, request: Request) -> Response | Awaitable[Response]:
        try:
            user = self._auth.user(request.headers.get(b"authorization"))
            sale_id = parse_id(request.params["id"], "sale")
            key = parse_idempotency_key(request.headers.get(b"idempotency-key"))
            quantity = parse_quantity(request.body)
            sale = self._configs.cached(sale_id)
            if sale is not None:
                if not sale.live_at(time.time()):
                    raise Problem(403, "sale-not-live", "the sale is not open")
                if sale_id in self._board:  # known everywhere: no Redis, no database
                    self._count("sold-out-local")
                    return SOLD_OUT
        except Problem as problem:
            self._count(problem.kind)
            raise
        return self._counted(self._purchase(sale_id, user.id, key, quantity))

    def _count(self, outcome: str) -> None:
        self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1

    async def _counted(self, work: Awaitable[Response]) -> Response:
        try:
            answer = await within(self._deadline, work)
        except Problem as problem:
            self._count(problem.kind)
            raise
        self._count("ordered")
        return answer

    async def _purchase(self, sale_id: int, user_id: str, key: str, quantity: int) -> Response:
        sale = await self._configs.get(sale_id)
        if sale is None:
            raise Problem(404, "sale-not-found", "no such sale")
        now = datetime.now(UTC)
        if not sale.live(now):
            raise Problem(403, "sale-not-live", "the sale is not open")
        if sale_id in self._board:
            raise _problem_409("sold-out", "the sale is sold out")
        wanted = fingerprint(sale_id, quantity)
        try:
            answer = await self._reserve(sale_id, user_id, key, quantity, wanted)
        except Problem:
            raise
        except Exception as exc:  # Redis (or the database, rebuilding the gate) is down
            log.warning("sale %d: gate unavailable: %s", sale_id, exc)
            raise Problem(
                503, "unavailable", "the sale gate is unavailable; retry", (("retry-after", "1"),)
            ) from None
        outcome = answer.outcome
        if outcome == "ok":
            self._feed.changed(sale_id, answer.remaining, sale.state(now, answer.remaining))
            return await self._commit(sale, user_id, key, quantity, wanted, now)
        if outcome == "sold_out":
            if answer.remaining <= 0:
                self._feed.changed(sale_id, 0, "sold_out")
                await _quietly(self._board.mark(sale_id))
            raise _problem_409("sold-out", "the sale is sold out")
        if outcome == "limit":
            raise _problem_409(
                "limit-reached", f"at most {sale.per_user_limit} per user in this sale"
            )
        if outcome == "in_flight":
            raise _problem_409(
                "key-in-flight", "a request with this Idempotency-Key is still being processed"
            )
        if outcome == "mismatch":
            raise Problem(422, "key-reused", "this Idempotency-Key was used for another request")
        if outcome == "done":
            return await self._replay(user_id, key, wanted)
        if outcome == "not_live":
            raise Problem(403, "sale-not-live", "the sale is not open")
        raise Problem(503, "unavailable", "the sale gate is not ready", (("retry-after", "1"),))

    async def _reserve(
        self, sale_id: int, user_id: str, key: str, quantity: int, wanted: str
    ) -> Answer:
        answer = await self._gate.reserve(sale_id, user_id, key, quantity, wanted)
        if answer.outcome == "unknown":  # Redis lost it, or first purchase here: rebuild
            await self._rebuild(sale_id)
            answer = await self._gate.reserve(sale_id, user_id, key, quantity, wanted)
        return answer

    async def _rebuild(self, sale_id: int) -> None:
        """Loads a sale's gate from the database, once for all the buyers who found it
        missing at the same moment (a storm hitting a restarted Redis)."""
        running = self._rebuilding.get(sale_id)
        if running is None:
            running = shared_task(self._load_gate(sale_id))
            self._rebuilding[sale_id] = running
            running.add_done_callback(lambda _: self._rebuilding.pop(sale_id, None))
        await asyncio.shield(running)

    async def _load_gate(self, sale_id: int) -> None:
        state = await self._sales.gate_state(sale_id)
        if state is not None:
            await self._gate.load(state)

    async def _commit(
        self, sale: Sale, user_id: str, key: str, quantity: int, wanted: str, now: datetime
    ) -> Response:
        commit = self._batcher.submit(sale, Win(user_id, quantity, key, wanted))
        try:
            try:
                done = await commit.waiter
            except asyncio.CancelledError:
                # The deadline (or shutdown) came during the commit. Cutting it off would
                # leave the buyer not knowing whether it landed: its outcome is the answer,
                # if it comes within one more deadline.
                done = await self._grace(commit.outcome)
        except _Unknown:
            await self._release(sale.id, user_id, key, quantity)  # over-admitting is safe
            raise Problem(
                503,
                "unavailable",
                "the order may or may not be stored: retry with the same Idempotency-Key",
                (("retry-after", "1"),),
            ) from None
        except Exception:
            await self._release(sale.id, user_id, key, quantity)
            log.exception("purchase commit failed")
            raise Problem(
                503, "unavailable", "the order could not be stored; retry", (("retry-after", "1"),)
            ) from None
        if done.outcome == "committed" and done.order is not None:
            # Committed: from here on nothing may turn the 201 into an error or delay it.
            # The bookkeeping is done in the background (see AfterCommit).
            self._books.committed(sale.id, Confirmed(user_id, key, wanted, done.order.id))
            return created(done.order)
        await self._release(sale.id, user_id, key, quantity)
        if done.outcome == "duplicate" and done.order is not None:
            if done.request_hash != wanted:
                raise Problem(
                    422, "key-reused", "this Idempotency-Key was used for another request"
                )
            return created(done.order)
        if done.outcome == "sold_out":
            self._feed.changed(sale.id, 0, "sold_out")
            await _quietly(self._gate.sold_out(sale.id))
            await _quietly(self._board.mark(sale.id))
            raise _problem_409("sold-out", "the sale is sold out")
        raise _problem_409("limit-reached", f"at most {sale.per_user_limit} per user in this sale")

    async def _grace(self, commit: asyncio.Future[Purchase]) -> Purchase:
        try:
            async with asyncio.timeout(self._deadline):
                return await asyncio.shield(commit)
        except TimeoutError:
            commit.cancel()
            raise _Unknown from None

    async def _release(self, sale_id: int, user_id: str, key: str, quantity: int) -> None:
        try:
            left = await self._gate.release(sale_id, user_id, key, quantity)
        except Exception:
            log.exception("gate release failed for sale %d", sale_id)
            return
        self._feed.changed(sale_id, left, "live")
        if left > 0:  # stock is back: nobody may be refused for it any longer
            await _quietly(self._board.unmark(sale_id))

    async def _replay(self, user_id: str, key: str, wanted: str) -> Response:
        found = await self._sales.order_by_key(user_id, key)
        if found is None:  # confirmed in the gate but not in the database: cannot be
            raise Problem(503, "unavailable", "retry", (("retry-after", "1"),))
        order, request_hash = found
        if request_hash != wanted:
            raise Problem(422, "key-reused", "this Idempotency-Key was used for another request")
        return created(order)


async def _quietly(step: Awaitable[None]) -> None:
    """Best-effort bookkeeping (the gate, the sold-out board): the database is the truth,
    so a Redis hiccup here is logged, never turned into an error answer."""
    try:
        await step
    except Exception as exc:
        log.warning("gate bookkeeping skipped: %s", exc)


async def rebuild_gates(sales: SqlSales, gate: Gate) -> int:
    """Start-up recovery: every sale not yet ended gets its gate rebuilt from what the
    database committed (stock left, what each user bought). Reservations a crashed
    process left behind are dropped, so its stock is not stranded; reservations other
    processes still have in flight commit or fail in the database, which re-checks all."""
    rebuilt = 0
    for sale_id in await sales.open_sales(datetime.now(UTC)):
        state = await sales.gate_state(sale_id)
        if state is not None and await gate.load(state, replace=True):
            rebuilt += 1
    return rebuilt


def created(order: Order) -> Response:
    """The 201 of a purchase; a replay of the same key gives these very bytes."""
    return response(201, encode_order(order), JSON, (("location", f"/orders/{order.id}"),))
