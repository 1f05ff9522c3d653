"""Sales in SQL: creating and reading them, a user's orders, and the purchase transaction.

The purchase transaction is where "no oversell, no lost order" is decided, whatever the
gate (Redis) believed: one transaction lowers `sales.remaining` only if enough is left,
raises the user's `sale_buyers.bought` only within the limit, inserts the order (unique per
user and Idempotency-Key) and its outbox row, and commits before anyone hears "201".
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from surge.backends.sql import connected, mark_ended
from surge.backends.sql_batch import NewOrders, Refused, commit_batch
from surge.backends.sql_replicas import ReplicaSet
from surge.ground.orders import PAID, PENDING, RETURNED, Order
from surge.ground.purchases import GateState, Purchase, PurchaseOutcome, StoredOrder, Win
from surge.ground.sales import NewSale, Sale
from surge.schema import ORDER_COLUMNS, orders, outbox, sale_buyers, sales

log = logging.getLogger("surge.sales")

ATTEMPTS = 3  # deadlocks and first-insert races are retried this often


class _Abort(Exception):
    def __init__(self, outcome: PurchaseOutcome) -> None:
        self.outcome = outcome


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC)


def _sale(row: Any) -> Sale:
    m = row._mapping
    return Sale(
        m["id"],
        m["name"],
        m["stock"],
        m["remaining"],
        m["per_user_limit"],
        _aware(m["starts_at"]),
        _aware(m["ends_at"]),
    )


def _order(row: Any) -> Order:
    m = row._mapping
    pay_by = m["pay_by"]
    return Order(
        m["id"],
        m["sale_id"],
        m["user_id"],
        m["quantity"],
        m["status"],
        _aware(m["created_at"]),
        None if pay_by is None else _aware(pay_by),
    )


_SALE_COLUMNS = (
    sales.c.id,
    sales.c.name,
    sales.c.stock,
    sales.c.remaining,
    sales.c.per_user_limit,
    sales.c.starts_at,
    sales.c.ends_at,
)
_ORDER_COLUMNS = ORDER_COLUMNS


class SqlSales:
    def __init__(self, engine: AsyncEngine, pay_window: float = 0.0) -> None:
        self.engine = engine
        self.replicas: ReplicaSet | None = None  # set by the factory when there are some
        # seconds a new order has to be paid in (0: a purchase is paid at once)
        self.pay_window = pay_window

    def _new_orders(self, created: datetime) -> NewOrders:
        """`created` aware UTC to the second; the batch's columns, naive as stored."""
        if self.pay_window <= 0:
            return NewOrders(_naive(created), PAID, None)
        pay_by = created + timedelta(seconds=math.ceil(self.pay_window))
        return NewOrders(_naive(created), PENDING, _naive(pay_by))

    async def create_sale(self, new: NewSale, now: datetime) -> Sale:
        async with connected(self.engine) as conn, conn.begin():
            result = await conn.execute(
                sa.insert(sales).values(
                    name=new.name,
                    stock=new.stock,
                    remaining=new.stock,
                    per_user_limit=new.per_user_limit,
                    starts_at=_naive(new.starts_at),
                    ends_at=_naive(new.ends_at),
                    created_at=_naive(now),
                )
            )
            sale_id = result.inserted_primary_key[0]  # type: ignore[index]
        return Sale(
            int(sale_id),
            new.name,
            new.stock,
            new.stock,
            new.per_user_limit,
            new.starts_at,
            new.ends_at,
        )

    async def get_sale(self, sale_id: int) -> Sale | None:
        async with connected(self.engine) as conn:
            row = (
                await conn.execute(sa.select(*_SALE_COLUMNS).where(sales.c.id == sale_id))
            ).first()
        return None if row is None else _sale(row)

    async def open_sales(self, now: datetime) -> list[int]:
        """Sales not ended yet: the ones whose gates are reconciled (surge.sales.reconcile)."""
        async with connected(self.engine) as conn:
            rows = await conn.execute(sa.select(sales.c.id).where(sales.c.ends_at > _naive(now)))
            return [int(row[0]) for row in rows]

    async def sales_page(self, now: datetime, before: int | None, limit: int) -> list[Sale]:
        """Sales not ended yet, newest first: walks the primary key backwards, so a page
        costs its rows plus the ended sales it skips (GET /sales caches each page 1 s)."""
        query = sa.select(*_SALE_COLUMNS).where(sales.c.ends_at > _naive(now))
        if before is not None:
            query = query.where(sales.c.id < before)
        query = query.order_by(sales.c.id.desc()).limit(limit)
        async with connected(self.engine) as conn:
            return [_sale(row) for row in (await conn.execute(query)).all()]

    async def gate_state(self, sale_id: int) -> GateState | None:
        """The gate's view of a sale: its stock left and every order of it, read by ONE
        statement, so both come from one snapshot on every database (an order committed
        between two reads would be in neither or in one only: surge.sales.reconcile needs both
        to agree)."""
        query = (
            sa.select(
                *_SALE_COLUMNS,
                orders.c.id.label("order_id"),
                orders.c.user_id,
                orders.c.idempotency_key,
                orders.c.quantity,
                orders.c.request_hash,
                orders.c.status,
            )
            .select_from(sales.outerjoin(orders, orders.c.sale_id == sales.c.id))
            .where(sales.c.id == sale_id)
        )
        async with connected(self.engine) as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            return None
        sale = _sale(rows[0])
        stored = tuple(
            StoredOrder(
                str(m["user_id"]),
                m["idempotency_key"],
                int(m["order_id"]),
                int(m["quantity"]),
                m["request_hash"] or "",
                m["status"] in RETURNED,
            )
            for m in (row._mapping for row in rows)
            if m["order_id"] is not None and m["idempotency_key"] is not None
        )
        return GateState(
            sale.id,
            sale.remaining,
            sale.per_user_limit,
            int(sale.starts_at.timestamp() * 1000),
            int(sale.ends_at.timestamp() * 1000),
            stored,
        )

    async def user_orders(self, user_id: str, before: int | None, limit: int) -> list[Order]:
        if self.replicas is not None:
            return await self.replicas.user_orders(user_id, before, limit, self._user_orders)
        return await self._user_orders(user_id, before, limit)

    async def _user_orders(self, user_id: str, before: int | None, limit: int) -> list[Order]:
        query = sa.select(*_ORDER_COLUMNS).where(orders.c.user_id == user_id)
        if before is not None:
            query = query.where(orders.c.id < before)
        query = query.order_by(orders.c.id.desc()).limit(limit)
        async with connected(self.engine) as conn:
            return [_order(row) for row in (await conn.execute(query)).all()]

    async def order_by_key(self, user_id: str, key: str) -> tuple[Order, str] | None:
        async with connected(self.engine) as conn:
            row = (
                await conn.execute(
                    sa.select(*_ORDER_COLUMNS, orders.c.request_hash).where(
                        orders.c.user_id == user_id, orders.c.idempotency_key == key
                    )
                )
            ).first()
        return None if row is None else (_order(row), row._mapping["request_hash"] or "")

    async def sale_orders(self, sale_id: int) -> list[Order]:
        async with connected(self.engine) as conn:
            rows = (
                await conn.execute(sa.select(*_ORDER_COLUMNS).where(orders.c.sale_id == sale_id))
            ).all()
        return [_order(row) for row in rows]

    async def purchase_many(
        self, sale: Sale, wins: list[Win], now: datetime
    ) -> list[Purchase | Exception]:
        """Commits several gate winners of one sale in ONE transaction (one round trip on
        MariaDB and PostgreSQL: `surge.backends.sql_batch`); if the database refuses
        anything in it (a repeat buyer, a reused key, not enough stock), falls back to one
        transaction per winner, so each still gets its own exact outcome."""
        created = now.astimezone(UTC).replace(microsecond=0)
        users = {w.user_id for w in wins}
        if (
            len(wins) > 1
            and len(users) == len(wins)
            and all(w.quantity <= sale.per_user_limit for w in wins)
        ):
            try:
                new = self._new_orders(created)
                ids = await commit_batch(self.engine, sale.id, wins, new)
            except Refused as refused:
                log.info("batch of %d fell back to single commits: %s", len(wins), refused)
            else:
                return [
                    Purchase(
                        "committed",
                        Order(
                            ids[w.user_id],
                            sale.id,
                            w.user_id,
                            w.quantity,
                            new.status,
                            created,
                            _aware(new.pay_by) if new.pay_by else None,
                        ),
                        w.request_hash,
                    )
                    for w in wins
                ]
        outcomes: list[Purchase | Exception] = []
        for w in wins:
            try:
                outcomes.append(
                    await self.purchase(sale, w.user_id, w.quantity, w.key, w.request_hash, now)
                )
            except Exception as exc:  # this winner's own failure, not the others'
                outcomes.append(exc)
        return outcomes

    async def purchase(
        self, sale: Sale, user_id: str, quantity: int, key: str, request_hash: str, now: datetime
    ) -> Purchase:
        created = now.astimezone(UTC).replace(microsecond=0)  # what every database keeps
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with connected(self.engine) as conn:
                    # READ COMMITTED on MySQL (surge.backends.sql.create_engine)
                    async with conn.begin():
                        order_id = await self._purchase(
                            conn, sale, user_id, quantity, key, request_hash, created
                        )
                    mark_ended(conn.info)
                new = self._new_orders(created)
                pay_by = _aware(new.pay_by) if new.pay_by else None
                return Purchase(
                    "committed",
                    Order(order_id, sale.id, user_id, quantity, new.status, created, pay_by),
                    request_hash,
                )
            except _Abort as abort:
                # the key may have bought already (the gate forgot it): replay, not refuse
                found = await self.order_by_key(user_id, key)
                if found is not None:
                    return Purchase("duplicate", found[0], found[1])
                return Purchase(abort.outcome)
            except sa.exc.IntegrityError:
                found = await self.order_by_key(user_id, key)
                if found is not None:
                    return Purchase("duplicate", found[0], found[1])
                if attempt == ATTEMPTS:
                    raise
                # two first purchases of one user raced to insert sale_buyers: go again
            except sa.exc.OperationalError as exc:
                if attempt == ATTEMPTS or not _retryable(exc):
                    raise
                log.info("purchase retried after %s", type(exc.orig).__name__)
        raise AssertionError("unreachable")

    async def _purchase(
        self,
        conn: AsyncConnection,
        sale: Sale,
        user_id: str,
        quantity: int,
        key: str,
        request_hash: str,
        created: datetime,
    ) -> int:
        counted = await conn.execute(
            sa.update(sale_buyers)
            .where(
                sale_buyers.c.sale_id == sale.id,
                sale_buyers.c.user_id == user_id,
                sale_buyers.c.bought + quantity <= sale.per_user_limit,
            )
            .values(bought=sale_buyers.c.bought + quantity)
        )
        if counted.rowcount != 1:
            known = (
                await conn.execute(
                    sa.select(sale_buyers.c.bought).where(
                        sale_buyers.c.sale_id == sale.id, sale_buyers.c.user_id == user_id
                    )
                )
            ).first()
            if known is not None or quantity > sale.per_user_limit:
                raise _Abort("limit")
            await conn.execute(
                sa.insert(sale_buyers).values(sale_id=sale.id, user_id=user_id, bought=quantity)
            )
        new = self._new_orders(created)
        result = await conn.execute(
            sa.insert(orders).values(
                sale_id=sale.id,
                user_id=user_id,
                quantity=quantity,
                status=new.status,
                created_at=new.created,
                pay_by=new.pay_by,
                idempotency_key=key,
                request_hash=request_hash,
            )
        )
        order_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        await conn.execute(
            sa.insert(outbox).values(
                topic="order.confirmed",
                created_at=_naive(created),
                payload=json.dumps(
                    {
                        "order_id": order_id,
                        "sale_id": sale.id,
                        "user_id": user_id,
                        "quantity": quantity,
                    }
                ),
            )
        )
        # Last, the sale's row: it is the one row every buyer of the sale needs, so its lock
        # is taken as late as possible and held only until the COMMIT that follows.
        taken = await conn.execute(
            sa.update(sales)
            .where(sales.c.id == sale.id, sales.c.remaining >= quantity)
            .values(remaining=sales.c.remaining - quantity)
        )
        if taken.rowcount != 1:
            raise _Abort("sold_out")  # rolls back the rows above
        return order_id


def _retryable(exc: sa.exc.OperationalError) -> bool:
    text = str(exc.orig).lower()
    return any(
        sign in text
        for sign in ("deadlock", "lock wait", "database is locked", "could not serialize")
    )
