"""In-process fakes of the ground floor's interfaces, for unit tests.

`MemorySales` is a complete `Sales` (surge.ground.interfaces) kept in dicts, with the
semantics of `SqlSales`: the contract suite tests/contract/test_sales_protocol.py runs the
same cases against both. The gate's in-process implementation is the real
`surge.backends.memory_gate.MemoryGate`; the bus's is `surge.backends.memory.MemoryBus`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from surge.ground.orders import Order
from surge.ground.purchases import GateState, Purchase, StoredOrder, Win
from surge.ground.sales import NewSale, Sale


@dataclass(slots=True)
class _Row:
    """A sale's row: its config and the stock not sold yet."""

    sale: Sale
    remaining: int


@dataclass(frozen=True, slots=True)
class _Stored:
    order: Order
    key: str
    request_hash: str


@dataclass(slots=True)
class _Fault:
    error: Exception
    user: str | None  # None: whoever commits next
    landed: bool  # the commit happens, then its answer is lost


class MemorySales:
    """The sales "database" in dicts. As in SQL: `remaining` never goes below zero, a user's
    quantity in a sale stays within the sale's `per_user_limit` whatever key they use, and
    a (user, key) pair holds at most one order, across sales: using it again answers
    "duplicate" with that first order and its request hash, whatever else was asked.

    Each commit is atomic: one step of the event loop, after its optional stall.

    Knobs for faults (each used once, by the commit it hits):
    - `fail_next(exc, user=None, landed=False)`: the next winner's commit (or the next of
      `user`) raises `exc`; with `landed`, it committed first (the answer was lost);
    - `stall_next()`: the next commit call (`purchase` or `purchase_many`) waits for the
      returned event before it does anything (a database that is slow to answer).

    `batches` records the winners of every `purchase_many` call, in order.
    """

    def __init__(self) -> None:
        self._rows: dict[int, _Row] = {}
        self._orders: dict[int, _Stored] = {}  # by order id, in id order
        self._by_key: dict[tuple[str, str], int] = {}  # (user, key) -> order id
        self._bought: dict[tuple[int, str], int] = {}  # (sale, user) -> quantity
        self._faults: list[_Fault] = []
        self._stalls: list[asyncio.Event] = []
        self._last_sale = 0
        self._last_order = 0
        self.batches: list[list[Win]] = []

    # -- knobs -----------------------------------------------------------------------------
    def fail_next(self, error: Exception, user: str | None = None, landed: bool = False) -> None:
        self._faults.append(_Fault(error, user, landed))

    def stall_next(self) -> asyncio.Event:
        event = asyncio.Event()
        self._stalls.append(event)
        return event

    # -- Sales -----------------------------------------------------------------------------
    async def create_sale(self, new: NewSale, now: datetime) -> Sale:
        self._last_sale += 1
        sale = Sale(
            self._last_sale,
            new.name,
            new.stock,
            new.stock,
            new.per_user_limit,
            new.starts_at,
            new.ends_at,
        )
        self._rows[sale.id] = _Row(sale, new.stock)
        return sale

    async def get_sale(self, sale_id: int) -> Sale | None:
        row = self._rows.get(sale_id)
        if row is None:
            return None
        s = row.sale
        return Sale(
            s.id,
            s.name,
            s.stock,
            row.remaining,
            s.per_user_limit,
            s.starts_at.astimezone(UTC),
            s.ends_at.astimezone(UTC),
        )

    async def open_sales(self, now: datetime) -> list[int]:
        return [i for i, row in self._rows.items() if row.sale.ends_at > now]

    async def sales_page(self, now: datetime, before: int | None, limit: int) -> list[Sale]:
        found = []
        for sale_id in sorted(self._rows, reverse=True):
            sale = await self.get_sale(sale_id)
            if sale is not None and sale.ends_at > now and (before is None or sale_id < before):
                found.append(sale)
        return found[:limit]

    async def gate_state(self, sale_id: int) -> GateState | None:
        row = self._rows.get(sale_id)
        if row is None:
            return None
        return GateState(
            sale_id,
            row.remaining,
            row.sale.per_user_limit,
            int(row.sale.starts_at.timestamp() * 1000),
            int(row.sale.ends_at.timestamp() * 1000),
            tuple(
                StoredOrder(s.order.user_id, s.key, s.order.id, s.order.quantity, s.request_hash)
                for s in self._orders.values()
                if s.order.sale_id == sale_id
            ),
        )

    async def user_orders(self, user_id: str, before: int | None, limit: int) -> list[Order]:
        found = [
            s.order
            for order_id, s in reversed(self._orders.items())
            if s.order.user_id == user_id and (before is None or order_id < before)
        ]
        return found[:limit]

    async def order_by_key(self, user_id: str, key: str) -> tuple[Order, str] | None:
        order_id = self._by_key.get((user_id, key))
        if order_id is None:
            return None
        stored = self._orders[order_id]
        return stored.order, stored.request_hash

    async def sale_orders(self, sale_id: int) -> list[Order]:
        return [s.order for s in self._orders.values() if s.order.sale_id == sale_id]

    async def purchase_many(
        self, sale: Sale, wins: list[Win], now: datetime
    ) -> list[Purchase | Exception]:
        self.batches.append(list(wins))
        await self._stall()
        outcomes: list[Purchase | Exception] = []
        for w in wins:
            try:
                outcomes.append(
                    self._commit(sale, w.user_id, w.quantity, w.key, w.request_hash, now)
                )
            except Exception as exc:  # this winner's own failure, not the others'
                outcomes.append(exc)
        return outcomes

    async def purchase(
        self, sale: Sale, user_id: str, quantity: int, key: str, request_hash: str, now: datetime
    ) -> Purchase:
        await self._stall()
        return self._commit(sale, user_id, quantity, key, request_hash, now)

    # -- the transaction -------------------------------------------------------------------
    async def _stall(self) -> None:
        if self._stalls:
            await self._stalls.pop(0).wait()

    def _fault(self, user_id: str) -> _Fault | None:
        for i, fault in enumerate(self._faults):
            if fault.user is None or fault.user == user_id:
                return self._faults.pop(i)
        return None

    def _commit(
        self, sale: Sale, user_id: str, quantity: int, key: str, request_hash: str, now: datetime
    ) -> Purchase:
        fault = self._fault(user_id)
        if fault is not None and not fault.landed:
            raise fault.error
        done = self._transaction(sale, user_id, quantity, key, request_hash, now)
        if fault is not None:
            raise fault.error
        return done

    def _transaction(
        self, sale: Sale, user_id: str, quantity: int, key: str, request_hash: str, now: datetime
    ) -> Purchase:
        """SqlSales.purchase's order of checks: a used key replays its order whatever else
        would refuse; then the user's limit (the `sale` given, as SQL uses it); then stock."""
        first = self._by_key.get((user_id, key))
        if first is not None:
            stored = self._orders[first]
            return Purchase("duplicate", stored.order, stored.request_hash)
        bought = self._bought.get((sale.id, user_id), 0)
        if bought + quantity > sale.per_user_limit:
            return Purchase("limit")
        row = self._rows.get(sale.id)
        if row is None or row.remaining < quantity:
            return Purchase("sold_out")
        row.remaining -= quantity
        self._bought[sale.id, user_id] = bought + quantity
        self._last_order += 1
        created = now.astimezone(UTC).replace(microsecond=0)  # what every database keeps
        order = Order(self._last_order, sale.id, user_id, quantity, "paid", created)
        self._orders[order.id] = _Stored(order, key, request_hash)
        self._by_key[user_id, key] = order.id
        return Purchase("committed", order, request_hash)
