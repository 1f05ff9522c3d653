"""The embedded stock gate: the in-process implementation of `Gate`
(surge.ground.interfaces), which documents the protocol; `RedisGate` is the shared one."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from surge.ground.purchases import (
    UNCERTAIN_FOR_MS,
    Answer,
    Confirmed,
    GateState,
    Reconciled,
    StoredOrder,
    field_of,
    user_of,
)


@dataclass(frozen=True, slots=True)
class _Key:
    kind: str  # p(ending), d(one), u(ncertain), r(eturned): see Gate's docstring
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
            field_of(o.user_id, o.key): _Key(
                "r" if o.returned else "d", o.fingerprint, o.order_id, o.quantity, 0
            )
            for o in state.orders
        }
        bought: dict[str, int] = {}
        for o in state.orders:
            if not o.returned:
                bought[o.user_id] = bought.get(o.user_id, 0) + o.quantity
        remaining, dropped, now_ms = state.remaining, 0, _now_ms()
        for field, entry in (old.keys if old else {}).items():
            stored = keys.get(field)
            if stored is not None:  # committed by the snapshot: counted in its remaining
                if stored.kind == "d" and entry.kind == "r":  # returned after the snapshot
                    keys[field] = entry
                    remaining += entry.quantity
                    user = user_of(field)
                    bought[user] = bought.get(user, 0) - entry.quantity
                continue
            if entry.kind == "r":  # a return the snapshot predates: its order too
                keys[field] = entry
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
        bought = {user: count for user, count in bought.items() if count > 0}
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
            if prior.kind in ("d", "r"):
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
                field = field_of(o.user_id, o.key)
                prior = sale.keys.get(field)
                if prior is None or prior.kind != "r":  # returned before it was confirmed
                    sale.keys[field] = _Key("d", o.fingerprint, o.order_id, o.quantity, 0)

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
            self._unbuy(sale, user_id, quantity)
        return sale.remaining

    async def give_back(self, sale_id: int, order: StoredOrder) -> int:
        sale = self._sales.get(sale_id)
        if sale is None:
            return -1
        field = field_of(order.user_id, order.key)
        prior = sale.keys.get(field)
        sale.keys[field] = _Key("r", order.fingerprint, order.order_id, order.quantity, 0)
        if prior is not None and prior.kind in ("d", "p"):  # its units were counted
            sale.remaining += order.quantity
            self._unbuy(sale, order.user_id, order.quantity)
        return sale.remaining

    @staticmethod
    def _unbuy(sale: _Sale, user_id: str, quantity: int) -> None:
        left = sale.bought.get(user_id, 0) - quantity
        if left > 0:
            sale.bought[user_id] = left
        else:
            sale.bought.pop(user_id, None)

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
