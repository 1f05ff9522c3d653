"""The stock gate: one atomic step that says whether a purchase may go on to the database.

It checks, all at once: the sale is known and live, the key was not used before, the user
stays within the limit, stock is left; and if so reserves the stock. It is only the fast
path: the database re-checks stock, limit and key in the purchase transaction, so a gate
that lost its state (Redis restarted) can let too many through to the database but never
lets an order be oversold.

Outcomes of `reserve`: "ok", "sold_out", "limit", "in_flight" (the key's first request is
still running), "done" (the key already bought: `order_id`), "mismatch" (the key was used
with another request), "not_live", "unknown" (the gate holds no state for the sale: load
it from the database and try again).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Answer:
    outcome: str
    remaining: int = 0
    order_id: int = 0


@dataclass(frozen=True, slots=True)
class Confirmed:
    """A reservation that became an order."""

    user_id: str
    key: str
    fingerprint: str
    order_id: int


@dataclass(frozen=True, slots=True)
class GateState:
    """What the gate needs to know of a sale, as the database has it."""

    sale_id: int
    remaining: int
    per_user_limit: int
    starts_ms: int
    ends_ms: int
    bought: dict[str, int] = field(default_factory=dict)


class Gate(Protocol):
    async def load(self, state: GateState, replace: bool = False) -> bool:
        """Installs a sale's state unless the gate already has one (or `replace`); True if
        installed. Replacing forgets reservations in flight: their commits still succeed
        or fail in the database, which stays the arbiter."""
        ...

    async def reserve(
        self, sale_id: int, user_id: str, key: str, quantity: int, fingerprint: str
    ) -> Answer: ...

    async def confirm(self, sale_id: int, orders: Sequence[Confirmed]) -> None:
        """The reservations became orders: their keys now replay them (one step for all)."""
        ...

    async def release(self, sale_id: int, user_id: str, key: str, quantity: int) -> int:
        """Gives a reservation back (its commit failed); returns the remaining stock."""
        ...

    async def sold_out(self, sale_id: int) -> None:
        """The database says no stock is left: the gate agrees from now on."""
        ...

    async def remaining(self, sale_id: int) -> int | None: ...


def _field(user_id: str, key: str) -> str:
    return f"{user_id}|{key}"


@dataclass(slots=True)
class _Sale:
    remaining: int
    limit: int
    starts_ms: int
    ends_ms: int
    bought: dict[str, int]
    keys: dict[str, tuple[str, str, int]]  # user|key -> (p(ending)/d(one), fingerprint, id)


class MemoryGate:
    """The embedded gate: plain dicts, atomic because one event loop runs every step."""

    def __init__(self) -> None:
        self._sales: dict[int, _Sale] = {}

    async def load(self, state: GateState, replace: bool = False) -> bool:
        if state.sale_id in self._sales and not replace:
            return False
        self._sales[state.sale_id] = _Sale(
            state.remaining,
            state.per_user_limit,
            state.starts_ms,
            state.ends_ms,
            dict(state.bought),
            {},
        )
        return True

    async def reserve(
        self, sale_id: int, user_id: str, key: str, quantity: int, fingerprint: str
    ) -> Answer:
        sale = self._sales.get(sale_id)
        if sale is None:
            return Answer("unknown")
        now_ms = int(time.time() * 1000)
        if not sale.starts_ms <= now_ms < sale.ends_ms:
            return Answer("not_live", sale.remaining)
        prior = sale.keys.get(_field(user_id, key))
        if prior is not None:
            kind, known, order_id = prior
            if known != fingerprint:
                return Answer("mismatch", sale.remaining)
            return Answer("done" if kind == "d" else "in_flight", sale.remaining, order_id)
        if sale.remaining < quantity:
            return Answer("sold_out", sale.remaining)
        if sale.bought.get(user_id, 0) + quantity > sale.limit:
            return Answer("limit", sale.remaining)
        sale.remaining -= quantity
        sale.bought[user_id] = sale.bought.get(user_id, 0) + quantity
        sale.keys[_field(user_id, key)] = ("p", fingerprint, 0)
        return Answer("ok", sale.remaining)

    async def confirm(self, sale_id: int, orders: Sequence[Confirmed]) -> None:
        sale = self._sales.get(sale_id)
        if sale is not None:
            for o in orders:
                sale.keys[_field(o.user_id, o.key)] = ("d", o.fingerprint, o.order_id)

    async def release(self, sale_id: int, user_id: str, key: str, quantity: int) -> int:
        sale = self._sales.get(sale_id)
        if sale is None:
            return 0
        field = _field(user_id, key)
        prior = sale.keys.get(field)
        if prior is not None and prior[0] == "p":  # only a pending one, and only once
            del sale.keys[field]
            sale.remaining += quantity
            sale.bought[user_id] = max(0, sale.bought.get(user_id, 0) - quantity)
        return sale.remaining

    async def sold_out(self, sale_id: int) -> None:
        sale = self._sales.get(sale_id)
        if sale is not None:
            sale.remaining = 0

    async def remaining(self, sale_id: int) -> int | None:
        sale = self._sales.get(sale_id)
        return None if sale is None else sale.remaining
