"""A batch of flash-sale winners committed in one transaction, in as few round trips as
each database allows.

In a storm every round trip of a batch waits for the event loop to come round while it
also answers tens of thousands of refusals a second (measured: 3-7 ms each), and every
winner of the batch waits for all of them. So:

- MariaDB/MySQL: one `CALL surge_purchase_batch(...)` (migration 0003): the statements
  run inside the server, COMMIT included. Sent on the driver's own cursor, because the
  CALL answers with two results (the order ids, then its own status) and SQLAlchemy
  reads one; the connection is handed back with no transaction open, and told so
  (`mark_ended`), so checking it in costs nothing either.
- PostgreSQL: one statement of data-modifying CTEs, run by asyncpg outside any explicit
  transaction (one statement is one transaction) and prepared once per connection.
- SQLite: in-process, no round trips to save: the plain statements in one transaction.

The statements are the same everywhere and in the same order (sale_buyers, orders,
outbox, then the sale's row last, so its lock is held the shortest): see docs/sales.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from surge.backends.sql import connected, mark_ended
from surge.schema import orders, outbox, sale_buyers, sales


class Winner(Protocol):
    @property
    def user_id(self) -> str: ...
    @property
    def quantity(self) -> int: ...
    @property
    def key(self) -> str: ...
    @property
    def request_hash(self) -> str: ...


class Refused(Exception):
    """The database refused something in the batch (a repeat buyer, a reused key, not
    enough stock, a deadlock): none of it was committed; commit the winners one by one."""


@dataclass(frozen=True, slots=True)
class NewOrders:
    """What every order of a batch is made with: `created` and `pay_by` naive UTC, to the
    second, as every database keeps them (`pay_by` None: paid at once)."""

    created: datetime
    status: str
    pay_by: datetime | None


async def commit_batch(
    engine: AsyncEngine, sale_id: int, wins: Sequence[Winner], new: NewOrders
) -> dict[str, int]:
    """Commits every winner (distinct users) or none; returns user id -> order id."""
    total = sum(w.quantity for w in wins)
    dialect = engine.dialect.name
    if dialect == "mysql":
        return await _mysql(engine, sale_id, wins, total, new)
    if dialect == "postgresql":
        return await _postgresql(engine, sale_id, wins, total, new)
    return await _statements(engine, sale_id, wins, total, new)


# -- MariaDB / MySQL -----------------------------------------------------------------------
_CALL = "CALL surge_purchase_batch(%s, %s, %s, %s, %s, %s)"
# not enough stock (the procedure's SIGNAL), duplicate key, deadlock, lock wait timeout
_MYSQL_REFUSALS = {1644, 1062, 1213, 1205}


async def _mysql(
    engine: AsyncEngine, sale_id: int, wins: Sequence[Winner], total: int, new: NewOrders
) -> dict[str, int]:
    payload = json.dumps([[w.user_id, w.quantity, w.key, w.request_hash] for w in wins])
    async with connected(engine) as conn:
        driver: Any = (await conn.get_raw_connection()).driver_connection
        try:
            async with driver.cursor() as cursor:
                args = (sale_id, total, new.created, payload, new.status, new.pay_by)
                await cursor.execute(_CALL, args)
                row = await cursor.fetchone()
                while await cursor.nextset():  # the CALL's own status: a failed COMMIT
                    pass
        except Exception as exc:
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
            if code in _MYSQL_REFUSALS:
                raise Refused(str(exc)) from exc
            await _discard(conn)
            raise
        mark_ended(conn.info)
    return {str(user): int(order_id) for order_id, user in json.loads(row[0])}


# -- PostgreSQL ----------------------------------------------------------------------------
# If the sale has too little stock left, the UPDATE matches nothing, `s` is empty and so
# nothing is inserted: the statement returns no rows and changes nothing.
_CTE = """
WITH w AS (
  SELECT * FROM unnest($2::text[], $3::int[], $4::text[], $5::text[])
    AS w(user_id, quantity, idem, fp)
), s AS (
  UPDATE sales SET remaining = remaining - $6 WHERE id = $1 AND remaining >= $6 RETURNING id
), b AS (
  INSERT INTO sale_buyers (sale_id, user_id, bought)
  SELECT $1, user_id, quantity FROM w WHERE EXISTS (SELECT 1 FROM s)
), o AS (
  INSERT INTO orders
    (sale_id, user_id, quantity, status, created_at, pay_by, idempotency_key, request_hash)
  SELECT $1, user_id, quantity, $8, $7, $9, idem, fp FROM w WHERE EXISTS (SELECT 1 FROM s)
  RETURNING id, sale_id, user_id, quantity
), x AS (
  INSERT INTO outbox (topic, created_at, payload)
  SELECT 'order.confirmed', $7, json_build_object(
    'order_id', id, 'sale_id', sale_id, 'user_id', user_id, 'quantity', quantity)::text
  FROM o
)
SELECT id, user_id FROM o
"""
# unique violation (repeat buyer, reused key), deadlock or serialization failure
_PG_REFUSALS = ("23505", "40P01", "40001", "55P03")


async def _postgresql(
    engine: AsyncEngine, sale_id: int, wins: Sequence[Winner], total: int, new: NewOrders
) -> dict[str, int]:
    async with connected(engine) as conn:
        driver: Any = (await conn.get_raw_connection()).driver_connection
        try:
            rows = await driver.fetch(
                _CTE,
                sale_id,
                [w.user_id for w in wins],
                [w.quantity for w in wins],
                [w.key for w in wins],
                [w.request_hash for w in wins],
                total,
                new.created,
                new.status,
                new.pay_by,
            )
        except Exception as exc:
            if getattr(exc, "sqlstate", None) in _PG_REFUSALS:
                raise Refused(str(exc)) from exc
            await _discard(conn)
            raise
    if len(rows) != len(wins):
        raise Refused("not enough stock left")
    return {str(row["user_id"]): int(row["id"]) for row in rows}


async def _discard(conn: AsyncConnection) -> None:
    """After an unexpected error on the driver's own cursor the connection's state is
    unknown (SQLAlchemy did not see the error): close it rather than pool it."""
    await conn.invalidate()


# -- SQLite (and any other database): the plain statements -------------------------------
async def _statements(
    engine: AsyncEngine, sale_id: int, wins: Sequence[Winner], total: int, new: NewOrders
) -> dict[str, int]:
    try:
        async with connected(engine) as conn, conn.begin():
            # a repeat buyer's existing row is a primary-key violation: refused
            await conn.execute(
                sa.insert(sale_buyers),
                [{"sale_id": sale_id, "user_id": w.user_id, "bought": w.quantity} for w in wins],
            )
            rows = (
                await conn.execute(
                    sa.insert(orders).returning(orders.c.id, orders.c.user_id),
                    [
                        {
                            "sale_id": sale_id,
                            "user_id": w.user_id,
                            "quantity": w.quantity,
                            "status": new.status,
                            "created_at": new.created,
                            "pay_by": new.pay_by,
                            "idempotency_key": w.key,
                            "request_hash": w.request_hash,
                        }
                        for w in wins
                    ],
                )
            ).all()
            ids = {str(row[1]): int(row[0]) for row in rows}
            await conn.execute(
                sa.insert(outbox),
                [
                    {
                        "topic": "order.confirmed",
                        "created_at": new.created,
                        "payload": json.dumps(
                            {
                                "order_id": ids[w.user_id],
                                "sale_id": sale_id,
                                "user_id": w.user_id,
                                "quantity": w.quantity,
                            }
                        ),
                    }
                    for w in wins
                ],
            )
            taken = await conn.execute(
                sa.update(sales)
                .where(sales.c.id == sale_id, sales.c.remaining >= total)
                .values(remaining=sales.c.remaining - total)
            )
            if taken.rowcount != 1:
                raise Refused("not enough stock left")  # rolls the lot back
    except (sa.exc.IntegrityError, sa.exc.OperationalError) as exc:
        raise Refused(str(exc)) from exc
    return ids
