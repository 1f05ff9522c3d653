"""POST /sales/{id}/orders: the flash-sale purchase, top to bottom.

1. Cheap refusals first, without I/O: token (401), sale id (400), Idempotency-Key (400),
   body (400/422), the sale's config from an in-process cache (404, 403 before it opens),
   and the process-wide sold-out board (409): once a sale is sold out every process knows
   it (pub/sub), so the flood of late buyers costs no Redis or database round trip (the
   board never refuses a key the gate holds: surge.sales.cache).
2. The gate (`surge.gate`) decides in one atomic step: ok / sold_out / limit / in_flight /
   done (replay) / mismatch (422).
3. A reservation is committed by one database transaction (`Sales.purchase`) that
   re-checks stock, limit and key; 201 only after it committed. Whatever fails after the
   reservation gives it back to the gate.

Idempotency is a durable promise: a key whose purchase committed gets its 201, whatever
was killed or restarted since. The gate knows every committed key (reconciliation gives
it back any it lost: surge.sales.reconcile) except those whose commit it has not heard of yet
("in_flight") and those whose commit may have landed unheard ("uncertain"); for those,
and for a sale whose gate is gone (a day after the end), the database is asked before
anything is refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

from surge.auth import Authenticator
from surge.ground.interfaces import Gate, Sales
from surge.ground.orders import Order
from surge.ground.purchases import Answer, Confirmed, Purchase, Reconciled, Win
from surge.ground.sales import Sale, fingerprint, parse_idempotency_key, parse_quantity
from surge.ground.web import JSON, Problem, Request, Response, problem_response, response
from surge.orders import encode_order, parse_id
from surge.protect.deadlines import within
from surge.sales.cache import SaleConfigs, SoldOutBoard
from surge.sales.commits import AfterCommit, CommitBatcher
from surge.sales.feed import StockFeed, UserEvents
from surge.sales.reconcile import GateKeeper
from surge.sales.restock import StockBack

log = logging.getLogger("surge.purchase")
T = TypeVar("T")

SOLD_OUT = problem_response(409, "sold-out", "the sale is sold out")
# How long after an attempt's commit failed unheard its order may still appear: a refusal
# of its retry before then would be final for a purchase that may yet commit, so it is
# 409 key-in-flight instead (retry). Beyond the request's own deadline and grace, a
# transaction already sent can only run on as long as the database lets it wait for a
# lock (docs/sales.md: keep the database's lock-wait timeout below this).
LATE_COMMIT_MS = 30_000
_UNAVAILABLE = (("retry-after", "1"),)


class _Unknown(Exception):
    """A commit outlived the deadline and its grace: whether it landed is unknown."""


def _sold_out() -> Problem:
    return Problem(409, "sold-out", "the sale is sold out")


def _not_live() -> Problem:
    return Problem(403, "sale-not-live", "the sale is not open")


def _key_reused() -> Problem:
    return Problem(422, "key-reused", "this Idempotency-Key was used for another request")


class Purchases:
    def __init__(
        self,
        auth: Authenticator,
        sales: Sales,
        gate: Gate,
        configs: SaleConfigs,
        board: SoldOutBoard,
        feed: StockFeed,
        deadline: float,
        invalidate: Callable[..., Awaitable[None]],
        events: UserEvents | None = None,
    ) -> None:
        self._auth = auth
        self._sales = sales
        self._gate = gate
        self._configs = configs
        self._board = board
        self._feed = feed
        self.outcomes: dict[str, int] = {}  # purchases_total{outcome} (surge.metrics)
        self._deadline = deadline
        self._batcher = CommitBatcher(sales)
        self._books = AfterCommit(gate, invalidate)
        self._events = events  # the buyer's own room hears of the order
        self._stock_back = StockBack(configs, feed, board)
        # A gate found missing is rebuilt by reconciling it (surge.sales.reconcile; App runs the
        # periodic pass). A reservation is stale once its request has given up: the
        # deadline, the commit's grace of one more, and a margin.
        self.keeper = GateKeeper(sales, gate, 2 * deadline + 2, self.reconciled)

    async def close(self) -> None:
        await self._books.close()
        if self._events is not None:
            await self._events.close()

    def handle(self, request: Request) -> Response | Awaitable[Response]:
        try:
            user = self._auth.user(request.headers.get(b"authorization"))
            sale_id = parse_id(request.params["id"], "sale")
            key = parse_idempotency_key(request.headers.get(b"idempotency-key"))
            quantity = parse_quantity(request.body)
            sale = self._configs.cached(sale_id)
            if sale is not None:
                now = time.time()
                if now < sale.starts_ts:
                    raise _not_live()
                # (an ended sale goes on: the request may replay a purchase of its last moment)
                if now < sale.ends_ts and self._board.refuses(sale_id, user.id, key):
                    self._count("sold-out-local")  # known everywhere: no Redis, no database
                    return SOLD_OUT
        except Problem as problem:
            self._count(problem.kind)
            raise
        return self._counted(self._purchase(sale_id, user.id, key, quantity))

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

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
        if now < sale.starts_at:
            raise _not_live()
        if now < sale.ends_at and self._board.refuses(sale_id, user_id, key):
            raise _sold_out()
        wanted = fingerprint(sale_id, quantity)
        answer = await _gate_step(sale_id, self._reserve(sale, user_id, key, quantity, wanted, now))
        if answer.outcome == "uncertain":
            # an earlier attempt with this key may have committed unheard (a lost
            # connection, a deadline): if it did, this is its replay; if not, it may buy now
            stored = await self._stored(sale_id, user_id, key, wanted)
            if stored is not None:
                return stored
            answer = await _gate_step(
                sale_id, self._gate.retake(sale_id, user_id, key, quantity, wanted)
            )
            if answer.outcome == "again":  # no longer uncertain (reconciled meanwhile)
                answer = await _gate_step(
                    sale_id, self._reserve(sale, user_id, key, quantity, wanted, now)
                )
            elif answer.outcome != "ok" and answer.uncertain_ms < LATE_COMMIT_MS:
                # refused, but the first attempt may yet commit: not a final answer (the
                # database was asked just above)
                raise self._refusal(sale, "in_flight")
        outcome = answer.outcome
        if outcome == "ok":
            self._feed.changed(sale_id, answer.remaining, sale.state(now, answer.remaining))
            return await self._commit(sale, user_id, key, quantity, wanted, now)
        if outcome == "done":
            return await self._replay(sale_id, user_id, key, wanted)
        if outcome == "mismatch":
            raise _key_reused()
        if outcome == "sold_out" and answer.remaining <= 0:
            self._feed.changed(sale_id, 0, "sold_out")
            await _quietly(self._board.mark(sale_id))
        if outcome in ("in_flight", "gone"):
            # the key may have committed without the gate hearing of it (a process died
            # before its bookkeeping, Redis was down then; the gate is gone): the database
            stored = await self._stored(sale_id, user_id, key, wanted)
            if stored is not None:
                return stored
        raise self._refusal(sale, outcome)

    def _refusal(self, sale: Sale, outcome: str) -> Problem:
        if outcome == "sold_out":
            return _sold_out()
        if outcome == "limit":
            return Problem(
                409, "limit-reached", f"at most {sale.per_user_limit} per user in this sale"
            )
        if outcome in ("in_flight", "uncertain"):  # (uncertain: a retry raced this one)
            return Problem(
                409, "key-in-flight", "a request with this Idempotency-Key is still being processed"
            )
        if outcome in ("not_live", "gone"):
            return _not_live()
        return Problem(503, "unavailable", "the sale gate is not ready", _UNAVAILABLE)

    async def _reserve(
        self, sale: Sale, user_id: str, key: str, quantity: int, wanted: str, now: datetime
    ) -> Answer:
        answer = await self._gate.reserve(sale.id, user_id, key, quantity, wanted)
        if answer.outcome == "unknown":
            if now >= sale.ends_at:  # the gate is gone with its sale: only the database knows
                return Answer("gone")
            await self.keeper.sale(sale.id)  # Redis lost it, or first purchase here
            answer = await self._gate.reserve(sale.id, user_id, key, quantity, wanted)
        return answer

    async def reconciled(self, sale_id: int, done: Reconciled) -> None:
        """A reconciliation changed the gate's count: the stock feed hears of it, and if
        stock came back (a crashed process's reservation), no board may hide it."""
        if done.before == done.after:
            return
        sale = await self._configs.get(sale_id)
        if sale is not None:
            self._feed.changed(sale_id, done.after, sale.state(datetime.now(UTC), done.after))
        if done.after > 0 and (done.before == 0 or self._board.held(sale_id)):
            await _quietly(self._board.unmark(sale_id))

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
        except Exception as exc:
            # The deadline and its grace passed, or the database failed (a lost connection
            # may have committed all the same): the stock goes back (over-admitting is
            # safe) and the key becomes uncertain, so that its retry asks the database.
            if not isinstance(exc, _Unknown):
                log.exception("purchase commit failed")
            await self._release(sale.id, user_id, key, quantity, wanted)
            raise Problem(
                503,
                "unavailable",
                "the order may or may not be stored: retry with the same Idempotency-Key",
                _UNAVAILABLE,
            ) from None
        if done.outcome == "committed" and done.order is not None:
            # Committed: from here on nothing may turn the 201 into an error or delay it.
            # The bookkeeping is done in the background (see AfterCommit).
            self._books.committed(sale.id, _confirmed(done.order, key, wanted))
            if self._events is not None:
                self._events.order_confirmed(done.order)
            return created(done.order)
        await self._release(sale.id, user_id, key, quantity)
        if done.outcome == "duplicate" and done.order is not None:
            if done.request_hash != wanted:
                raise _key_reused()
            self._books.committed(sale.id, _confirmed(done.order, key, wanted))  # teach the gate
            return created(done.order)
        if done.outcome == "sold_out":
            if quantity == 1:  # none left (for more, only fewer than asked: leave the count)
                self._feed.changed(sale.id, 0, "sold_out")
                await _quietly(self._gate.sold_out(sale.id))
                await _quietly(self._board.mark(sale.id))
            raise _sold_out()
        raise self._refusal(sale, "limit")

    async def _grace(self, commit: asyncio.Future[Purchase]) -> Purchase:
        try:
            async with asyncio.timeout(self._deadline):
                return await asyncio.shield(commit)
        except TimeoutError:
            commit.cancel()
            raise _Unknown from None

    async def _release(
        self, sale_id: int, user_id: str, key: str, quantity: int, uncertain_as: str = ""
    ) -> None:
        """Gives the reservation back; with `uncertain_as` (the request's fingerprint) the
        key stays as uncertain: its commit may have landed unheard."""
        try:
            left = await self._gate.release(
                sale_id, user_id, key, quantity, bool(uncertain_as), uncertain_as
            )
        except Exception:
            log.exception("gate release failed for sale %d", sale_id)
            return
        await self._stock_back(sale_id, left)

    async def _replay(self, sale_id: int, user_id: str, key: str, wanted: str) -> Response:
        stored = await self._stored(sale_id, user_id, key, wanted, learn=False)
        if stored is None:  # confirmed in the gate but not in the database: cannot be
            raise Problem(503, "unavailable", "retry", _UNAVAILABLE)
        return stored

    async def _stored(
        self, sale_id: int, user_id: str, key: str, wanted: str, learn: bool = True
    ) -> Response | None:
        """The 201 of the key's committed purchase (422 if it asked for something else), or
        None if the database has no order with this key. With `learn`, the gate is taught
        the key (it did not know it was done), so the next replay is answered by it."""
        try:
            found = await self._sales.order_by_key(user_id, key)
        except Exception as exc:
            log.warning("sale %d: order lookup failed: %s", sale_id, exc)
            raise Problem(
                503, "unavailable", "the database is unavailable; retry", _UNAVAILABLE
            ) from None
        if found is None:
            return None
        order, request_hash = found
        if order.sale_id != sale_id or request_hash != wanted:
            raise _key_reused()
        if learn:
            self._books.committed(sale_id, _confirmed(order, key, wanted))
        return created(order)


async def _gate_step(sale_id: int, step: Awaitable[T]) -> T:
    """A step on the gate (or the database, rebuilding it): its failure is a 503."""
    try:
        return await step
    except Problem:
        raise
    except Exception as exc:
        log.warning("sale %d: gate unavailable: %s", sale_id, exc)
        raise Problem(
            503, "unavailable", "the sale gate is unavailable; retry", _UNAVAILABLE
        ) from None


async def _quietly(step: Awaitable[None]) -> None:
    """Best-effort bookkeeping (the gate, the sold-out board): the database is the truth,
    so a Redis hiccup here is logged, never turned into an error answer."""
    try:
        await step
    except Exception as exc:
        log.warning("gate bookkeeping skipped: %s", exc)


def _confirmed(order: Order, key: str, wanted: str) -> Confirmed:
    return Confirmed(order.user_id, key, wanted, order.id, order.quantity)


def created(order: Order) -> Response:
    """The 201 of a purchase; a replay of the same key gives these very bytes."""
    return response(201, encode_order(order), JSON, (("location", f"/orders/{order.id}"),))
