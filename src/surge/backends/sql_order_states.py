"""An order's life after its purchase, in the database: the `OrderStates` of
surge.ground.interfaces on SQLite, MariaDB/MySQL and PostgreSQL.

Each transition is a conditional UPDATE of the order's row (`WHERE status = 'pending'
AND ...`): whichever of two racing calls (a payment and the expiry sweep, two sweeps,
a cancellation and a payment) updates it first holds the row; the other matches nothing
and changes nothing. A cancellation or an expiry gives the units back in the same
transaction: `sale_buyers` first, `sales.remaining` last (the purchase's order: the
sale's row is the one every buyer needs, its lock is held the shortest), so
`remaining = stock - quantities of pending and paid orders` holds at every commit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from surge.backends.sql import connected
from surge.ground.orders import (
    CANCELLED,
    EXPIRED,
    PAID,
    PENDING,
    Order,
    OrderState,
    Transition,
)
from surge.schema import ORDER_COLUMNS, orders, outbox, sale_buyers, sales

log = logging.getLogger("surge.orders")

ATTEMPTS = 5  # a deadlock or lock wait timeout is retried (nothing of it was committed)
_DEADLOCKS = ("deadlock", "lock wait timeout", "database is locked", "40p01", "40001")


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None, microsecond=0)


def _aware(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.replace(tzinfo=UTC)


def _state(row: Any) -> OrderState:
    m = row._mapping
    created = m["created_at"].replace(tzinfo=UTC)
    order = Order(
        m["id"],
        m["sale_id"],
        m["user_id"],
        m["quantity"],
        m["status"],
        created,
        _aware(m["pay_by"]),
    )
    return OrderState(
        order,
        m["idempotency_key"] or "",
        m["request_hash"] or "",
        _aware(m["pay_by"]),
        _aware(m["closed_at"]),
        m["pay_key"],
        m["payment_ref"],
    )


_STATE_COLUMNS = (
    *ORDER_COLUMNS,
    orders.c.idempotency_key,
    orders.c.request_hash,
    orders.c.pay_by,
    orders.c.closed_at,
    orders.c.pay_key,
    orders.c.payment_ref,
)


class SqlOrderStates:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def get(self, order_id: int) -> OrderState | None:
        async with connected(self.engine) as conn:
            row = (
                await conn.execute(sa.select(*_STATE_COLUMNS).where(orders.c.id == order_id))
            ).first()
        return None if row is None else _state(row)

    async def pay(
        self, order_id: int, user_id: str, pay_key: str, payment_ref: str, now: datetime
    ) -> Transition:
        at = _naive(now)
        where = (
            orders.c.id == order_id,
            orders.c.user_id == user_id,
            orders.c.status == PENDING,
            orders.c.pay_by > at,
        )
        values = {"status": PAID, "closed_at": at, "pay_key": pay_key, "payment_ref": payment_ref}
        return await self._transition(order_id, where, values, returns=False, now=at)

    async def cancel(self, order_id: int, user_id: str | None, now: datetime) -> Transition:
        at = _naive(now)
        where: tuple[Any, ...]
        if user_id is None:  # an admin: before or after payment
            where = (orders.c.id == order_id, orders.c.status.in_((PENDING, PAID)))
        else:
            where = (orders.c.id == order_id, orders.c.user_id == user_id)
            where += (orders.c.status == PENDING,)
        return await self._transition(
            order_id, where, {"status": CANCELLED, "closed_at": at}, returns=True, now=at
        )

    async def expire(self, order_id: int, now: datetime) -> Transition:
        at = _naive(now)
        where = (orders.c.id == order_id, orders.c.status == PENDING, orders.c.pay_by <= at)
        return await self._transition(
            order_id, where, {"status": EXPIRED, "closed_at": at}, returns=True, now=at
        )

    async def expire_due(self, now: datetime, limit: int) -> list[OrderState]:
        """Expires up to `limit` pending orders whose pay_by has passed, in ONE transaction:
        the orders, each buyer's count, and each sale's row once (in sale id order, last).
        On MariaDB and PostgreSQL the due rows are taken FOR UPDATE SKIP LOCKED, so
        processes sweeping at once take different orders instead of queueing on the same
        rows; a payment holding a row's lock is skipped (the next sweep sees it paid).
        SQLite has one writer at a time: the transaction itself is the lock."""
        at = _naive(now)
        query = (
            sa.select(*_STATE_COLUMNS)
            .where(orders.c.status == PENDING, orders.c.pay_by <= at)
            .order_by(orders.c.pay_by, orders.c.id)
            .limit(limit)
        )
        if self.engine.dialect.name in ("mysql", "postgresql"):
            query = query.with_for_update(skip_locked=True)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with connected(self.engine) as conn, conn.begin():
                    due = [_state(row) for row in (await conn.execute(query)).all()]
                    if not due:
                        return []
                    ids = [state.order.id for state in due]
                    changed = await conn.execute(
                        sa.update(orders)
                        .where(orders.c.id.in_(ids), orders.c.status == PENDING)
                        .values(status=EXPIRED, closed_at=at)
                    )
                    if changed.rowcount != len(ids):  # another writer got in: go again
                        raise _Moved
                    expired = [_closed(state, EXPIRED, at) for state in due]
                    for state in expired:
                        await _record(conn, state, at)
                    await _give_back_all(conn, expired)
                return expired
            except _Moved:
                await _pause(attempt)
            except sa.exc.OperationalError as exc:
                text = str(exc.orig).lower()
                if attempt == ATTEMPTS or not any(sign in text for sign in _DEADLOCKS):
                    raise
                await _pause(attempt)
        return []

    async def _transition(
        self,
        order_id: int,
        where: Sequence[Any],
        values: dict[str, Any],
        returns: bool,
        now: datetime,
    ) -> Transition:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with connected(self.engine) as conn, conn.begin():
                    changed = await conn.execute(sa.update(orders).where(*where).values(**values))
                    if changed.rowcount != 1:
                        row = (
                            await conn.execute(
                                sa.select(*_STATE_COLUMNS).where(orders.c.id == order_id)
                            )
                        ).first()
                        return Transition(None if row is None else _state(row))
                    row = (
                        await conn.execute(
                            sa.select(*_STATE_COLUMNS).where(orders.c.id == order_id)
                        )
                    ).one()
                    state = _state(row)
                    await _record(conn, state, now)
                    if returns:
                        await _give_back_all(conn, [state])
                return Transition(state, changed=True)
            except sa.exc.OperationalError as exc:
                text = str(exc.orig).lower()
                if attempt == ATTEMPTS or not any(sign in text for sign in _DEADLOCKS):
                    raise
                log.info("order %d: transition retried after %s", order_id, type(exc.orig).__name__)
                await _pause(attempt)
        raise AssertionError("unreachable")


async def _record(conn: AsyncConnection, state: OrderState, now: datetime) -> None:
    """The transition's outbox event, in its transaction (surge.work: mail, audit)."""
    order = state.order
    payload: dict[str, Any] = {
        "order_id": order.id,
        "sale_id": order.sale_id,
        "user_id": order.user_id,
        "quantity": order.quantity,
    }
    if state.payment_ref is not None and order.status == PAID:
        payload["payment_ref"] = state.payment_ref
    await conn.execute(
        sa.insert(outbox).values(
            topic=f"order.{order.status}", created_at=now, payload=json.dumps(payload)
        )
    )


async def _pause(attempt: int) -> None:
    """Before trying again: SQLite refuses a second writer at once (it does not wait for a
    read transaction to become a writer), so two at once would collide again."""
    await asyncio.sleep(random.uniform(0.005, 0.03) * attempt)


class _Moved(Exception):
    """A due order changed between the read and the update (SQLite): roll back, again."""


def _closed(state: OrderState, status: str, at: datetime) -> OrderState:
    order = dataclasses.replace(state.order, status=status)
    return dataclasses.replace(state, order=order, closed_at=at.replace(tzinfo=UTC))


async def _give_back_all(conn: AsyncConnection, returned: Sequence[OrderState]) -> None:
    """The units of several orders back: each buyer's count, then each sale's row once,
    in sale id order (two sweeps never wait for each other in a cycle)."""
    per_buyer: dict[tuple[int, str], int] = {}
    per_sale: dict[int, int] = {}
    for state in returned:
        order = state.order
        key = (order.sale_id, order.user_id)
        per_buyer[key] = per_buyer.get(key, 0) + order.quantity
        per_sale[order.sale_id] = per_sale.get(order.sale_id, 0) + order.quantity
    for (sale_id, user_id), quantity in sorted(per_buyer.items()):
        buyer = (sale_buyers.c.sale_id == sale_id, sale_buyers.c.user_id == user_id)
        await conn.execute(
            sa.update(sale_buyers).where(*buyer).values(bought=sale_buyers.c.bought - quantity)
        )
        await conn.execute(sa.delete(sale_buyers).where(*buyer, sale_buyers.c.bought <= 0))
    for sale_id, quantity in sorted(per_sale.items()):
        await conn.execute(
            sa.update(sales)
            .where(sales.c.id == sale_id)
            .values(remaining=sales.c.remaining + quantity)
        )
