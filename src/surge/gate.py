"""The stock gate: one atomic step that says whether a purchase may go on to the database.

It checks, all at once: the sale is known and live, the key was not used before, the user
stays within the limit, stock is left; and if so reserves the stock. It is only the fast
path: the database re-checks stock, limit and key in the purchase transaction, so a gate
that lost its state (Redis restarted) can let too many through to the database but never
lets an order be oversold.

Outcomes of `reserve`: "ok", "sold_out", "limit", "in_flight" (the key's first request is
still running), "done" (the key already bought: `order_id`), "mismatch" (the key was used
with another request), "uncertain" (see below), "not_live", "unknown" (the gate holds no
state for the sale: load it from the database and try again).

A key is pending ("p") from its reservation until the gate learns its order ("d"). A
reservation whose commit may have landed although nobody heard it (the connection was
lost during the commit, the deadline and its grace passed, or the request died and the
reservation went stale) gives its stock back but keeps its key, as uncertain ("u"), for
`UNCERTAIN_FOR_MS`: a retry of it gets "uncertain", and surge.purchase asks the database:
the order's 201 if it committed; else the retry may buy afresh (`retake`: the database's
unique key would catch a late commit of the first attempt and replay it), and if the gate
refuses it, the key stays uncertain, since the first commit may still land. Thanks to
that and to reconciliation, the gate knows every committed key, and its refusals of
unknown keys need no database query.

`reconcile` installs a sale's state from a snapshot of the database, or brings an existing
one in step with it: see surge.reconcile for why that is exact while purchases go on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

UNCERTAIN_FOR_MS = 600_000  # an uncertain key is forgotten after this: no commit lasts it


@dataclass(frozen=True, slots=True)
class Answer:
    outcome: str
    remaining: int = 0
    order_id: int = 0  # "done": the key's order
    uncertain_ms: int = 0  # `retake` refused: how long the key has been uncertain


@dataclass(frozen=True, slots=True)
class Confirmed:
    """A reservation that became an order."""

    user_id: str
    key: str
    fingerprint: str
    order_id: int
    quantity: int


@dataclass(frozen=True, slots=True)
class StoredOrder:
    """An order of the sale as the database committed it, as far as the gate cares."""

    user_id: str
    key: str
    order_id: int
    quantity: int
    fingerprint: str


@dataclass(frozen=True, slots=True)
class GateState:
    """A sale as one database snapshot has it: its stock left and every order of it."""

    sale_id: int
    remaining: int
    per_user_limit: int
    starts_ms: int
    ends_ms: int
    orders: tuple[StoredOrder, ...] = ()


@dataclass(frozen=True, slots=True)
class Reconciled:
    before: int | None  # the gate's remaining before (None: it held nothing for the sale)
    after: int
    dropped: int  # pending reservations older than `stale_ms`, given back (now uncertain)


class Gate(Protocol):
    async def reconcile(self, state: GateState, stale_ms: int) -> Reconciled:
        """Makes the gate agree with `state` (a snapshot taken before the call): every
        stored order's key replays it; remaining = the snapshot's, less what is reserved
        and not committed yet, less what committed after the snapshot; pending
        reservations older than `stale_ms` give their stock back and become uncertain
        (their process died or gave up; if their commit lands after all, the next
        reconciliation counts it)."""
        ...

    async def reserve(
        self, sale_id: int, user_id: str, key: str, quantity: int, fingerprint: str
    ) -> Answer: ...

    async def confirm(self, sale_id: int, orders: Sequence[Confirmed]) -> None:
        """The reservations became orders: their keys now replay them (one step for all)."""
        ...

    async def release(
        self,
        sale_id: int,
        user_id: str,
        key: str,
        quantity: int,
        uncertain: bool = False,
        fingerprint: str = "",
    ) -> int:
        """Gives a reservation back (its commit failed; with `uncertain`, maybe not: the
        key stays, or is written, as uncertain); returns the remaining stock."""
        ...

    async def retake(
        self, sale_id: int, user_id: str, key: str, quantity: int, fingerprint: str
    ) -> Answer:
        """An uncertain key whose order the database does not have tries to buy, as a
        fresh attempt ("ok" reserves); refused, it stays uncertain (`uncertain_ms` says
        for how long). "again": it is no longer uncertain, `reserve` decides it."""
        ...

    async def sold_out(self, sale_id: int) -> None:
        """The database says no stock is left: the gate agrees from now on."""
        ...

    async def remaining(self, sale_id: int) -> int | None: ...

    async def keys(self, sale_id: int) -> frozenset[str] | None:
        """Every `user|key` the gate holds for the sale, committed, pending or uncertain
        (None: no state for it)."""
        ...

    async def claim(self, sale_id: int, seconds: float) -> bool:
        """True for one caller among all processes per `seconds`: the one that reconciles
        the sale this period."""
        ...


def field_of(user_id: str, key: str) -> str:
    return f"{user_id}|{key}"  # keys never hold "|" (surge.sales.parse_idempotency_key)


def user_of(field: str) -> str:
    return field.rpartition("|")[0]


@dataclass(frozen=True, slots=True)
class _Key:
    kind: str  # p(ending), d(one), u(ncertain): see the module's docstring
    fingerprint: str
    order_id: int
    quantity: int
    since_ms: int  # when the reservation was made (pending and uncertain ones)


@dataclass(slots=True)
class _Sale:
    remaining: int
    limit: int
    starts_ms: int
    ends_ms: int
    bought: dict[str, int]  # held or reserved (an uncertain key holds nothing)
    keys: dict[str, _Key]  # user|key -> pending reservation, order or uncertain


def _now_ms() -> int:
    return int(time.time() * 1000)


class MemoryGate:
    """The embedded gate: plain dicts, atomic because one event loop runs every step."""

    def __init__(self) -> None:
        self._sales: dict[int, _Sale] = {}

    async def reconcile(self, state: GateState, stale_ms: int) -> Reconciled:
        old = self._sales.get(state.sale_id)
        keys = {
            field_of(o.user_id, o.key): _Key("d", o.fingerprint, o.order_id, o.quantity, 0)
            for o in state.orders
        }
        bought: dict[str, int] = {}
        for o in state.orders:
            bought[o.user_id] = bought.get(o.user_id, 0) + o.quantity
        remaining, dropped, now_ms = state.remaining, 0, _now_ms()
        for field, entry in (old.keys if old else {}).items():
            if field in keys:  # committed by the snapshot: counted in its remaining
                continue
            user = user_of(field)
            age = now_ms - entry.since_ms
            if entry.kind == "u" or (entry.kind == "p" and age > stale_ms):
                if age <= UNCERTAIN_FOR_MS:  # kept, its stock not counted
                    keys[field] = _Key("u", entry.fingerprint, 0, entry.quantity, entry.since_ms)
                dropped += entry.kind == "p"
                continue
            # pending, or committed after the snapshot: not in its remaining yet
            keys[field] = entry
            remaining -= entry.quantity
            bought[user] = bought.get(user, 0) + entry.quantity
        remaining = max(0, remaining)
        self._sales[state.sale_id] = _Sale(
            remaining, state.per_user_limit, state.starts_ms, state.ends_ms, bought, keys
        )
        return Reconciled(None if old is None else old.remaining, remaining, dropped)

    async def reserve(
        self, sale_id: int, user_id: str, key: str, quantity: int, fingerprint: str
    ) -> Answer:
        sale = self._sales.get(sale_id)
        if sale is None:
            return Answer("unknown")
        now_ms = _now_ms()
        prior = sale.keys.get(field_of(user_id, key))
        if prior is not None:
            if prior.fingerprint != fingerprint:
                return Answer("mismatch", sale.remaining)
            if prior.kind == "d":
                return Answer("done", sale.remaining, prior.order_id)
            if prior.kind == "u":
                return Answer("uncertain", sale.remaining)
            return Answer("in_flight", sale.remaining)
        bought = sale.bought.get(user_id, 0)
        if not sale.starts_ms <= now_ms < sale.ends_ms:
            return Answer("not_live", sale.remaining)
        if sale.remaining < quantity:
            return Answer("sold_out", sale.remaining)
        if bought + quantity > sale.limit:
            return Answer("limit", sale.remaining)
        sale.remaining -= quantity
        sale.bought[user_id] = bought + quantity
        sale.keys[field_of(user_id, key)] = _Key("p", fingerprint, 0, quantity, now_ms)
        return Answer("ok", sale.remaining)

    async def confirm(self, sale_id: int, orders: Sequence[Confirmed]) -> None:
        sale = self._sales.get(sale_id)
        if sale is not None:
            for o in orders:
                sale.keys[field_of(o.user_id, o.key)] = _Key(
                    "d", o.fingerprint, o.order_id, o.quantity, 0
                )

    async def release(
        self,
        sale_id: int,
        user_id: str,
        key: str,
        quantity: int,
        uncertain: bool = False,
        fingerprint: str = "",
    ) -> int:
        sale = self._sales.get(sale_id)
        if sale is None:
            return 0
        field = field_of(user_id, key)
        prior = sale.keys.get(field)
        if prior is None and uncertain:  # the gate lost it meanwhile: uncertain, no stock
            sale.keys[field] = _Key("u", fingerprint, 0, quantity, _now_ms())
        if prior is not None and prior.kind == "p":  # only a pending one, and only once
            if uncertain:
                sale.keys[field] = _Key("u", prior.fingerprint, 0, prior.quantity, _now_ms())
            else:
                del sale.keys[field]
            sale.remaining += quantity
            left = sale.bought.get(user_id, 0) - quantity
            if left > 0:
                sale.bought[user_id] = left
            else:
                sale.bought.pop(user_id, None)
        return sale.remaining

    async def retake(
        self, sale_id: int, user_id: str, key: str, quantity: int, fingerprint: str
    ) -> Answer:
        sale = self._sales.get(sale_id)
        if sale is None:
            return Answer("again")
        field = field_of(user_id, key)
        prior = sale.keys.get(field)
        if prior is None or prior.kind != "u":
            return Answer("again", sale.remaining)
        now_ms = _now_ms()
        age = now_ms - prior.since_ms
        bought = sale.bought.get(user_id, 0)
        if prior.fingerprint != fingerprint:
            return Answer("mismatch", sale.remaining, uncertain_ms=age)
        if not sale.starts_ms <= now_ms < sale.ends_ms:
            return Answer("not_live", sale.remaining, uncertain_ms=age)
        if sale.remaining < quantity:
            return Answer("sold_out", sale.remaining, uncertain_ms=age)
        if bought + quantity > sale.limit:
            return Answer("limit", sale.remaining, uncertain_ms=age)
        sale.remaining -= quantity
        sale.bought[user_id] = bought + quantity
        sale.keys[field] = _Key("p", fingerprint, 0, quantity, now_ms)
        return Answer("ok", sale.remaining)

    async def sold_out(self, sale_id: int) -> None:
        sale = self._sales.get(sale_id)
        if sale is not None:
            sale.remaining = 0

    async def remaining(self, sale_id: int) -> int | None:
        sale = self._sales.get(sale_id)
        return None if sale is None else sale.remaining

    async def keys(self, sale_id: int) -> frozenset[str] | None:
        sale = self._sales.get(sale_id)
        return None if sale is None else frozenset(sale.keys)

    async def claim(self, sale_id: int, seconds: float) -> bool:
        return True  # one process holds the in-process gate
