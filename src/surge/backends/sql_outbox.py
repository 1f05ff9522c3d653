"""The outbox table in SQL (the `Outbox` of surge.ground.interfaces): what the relay
(surge.work.relay) does in the database.

A batch is marked published only after the stream has stored it, in the transaction that
locked it. Several relays run at once on MariaDB/MySQL and PostgreSQL: each locks its
batch with FOR UPDATE SKIP LOCKED, so two relays never hold the same row. SQLite has no
row locks: there one relay at a time holds a lease (a row in `outbox_lease`), the others
wait for it to lapse, and the UPDATE marking a batch published only applies while its
relay still holds the lease (otherwise the batch rolls back: `LeaseLost`).

The work here is outside the database's circuit breaker: a slow stream inside a batch's
transaction is not the database being down, and in `surge serve` (inline worker) that
breaker guards the purchases.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from surge.ground.events import Event
from surge.ground.interfaces import Publish
from surge.schema import outbox, outbox_lease

LEASE_SECONDS = 30.0  # renewed when less than RENEW_BELOW is left
RENEW_BELOW = 20.0  # more than a pass can take (PASS_TIMEOUT)
PASS_TIMEOUT = 10.0


class LeaseLost(Exception):
    """Another relay holds the SQLite lease now: this batch is rolled back."""


def event_of(row_id: int, topic: str, payload: str, created: datetime) -> Event:
    created_at = created.replace(tzinfo=UTC).timestamp()
    # the row id alone repeats once a database is emptied (SQLite reuses ids), and the
    # consumers would then skip a new order as already handled
    return Event(f"{row_id}.{int(created_at)}", topic, payload.encode(), created_at)


class SqlOutbox:
    """The outbox of one relay, named `name` (the SQLite lease's holder)."""

    def __init__(self, engine: AsyncEngine, name: str) -> None:
        self._engine = engine
        self._name = name
        self._sqlite = engine.dialect.name == "sqlite"
        self._lease_until = 0.0

    async def relay_batch(self, limit: int, publish: Publish) -> int:
        """Locks up to `limit` unpublished rows (SKIP LOCKED, or under the SQLite lease),
        awaits `publish` inside that transaction, then marks them published in it: see
        `Outbox.relay_batch`. Raises `LeaseLost` when the lease passed to another relay
        while the batch was in flight (nothing marked)."""
        if self._sqlite and not await self._hold_lease():
            return 0
        query = (
            sa.select(outbox.c.id, outbox.c.topic, outbox.c.payload, outbox.c.created_at)
            .where(outbox.c.published_at.is_(None))
            .order_by(outbox.c.id)
            .limit(limit)
        )
        if not self._sqlite:
            # the engine runs MariaDB in READ COMMITTED (surge.backends.sql): the lock
            # takes these rows only, not the gap where purchases insert new ones
            query = query.with_for_update(skip_locked=True)
        async with self._connection() as conn, conn.begin():
            rows = (await conn.execute(query)).all()
            if not rows:
                return 0
            await publish([event_of(*row) for row in rows])
            mark = (
                sa.update(outbox)
                .where(outbox.c.id.in_([row[0] for row in rows]))
                .values(published_at=_utcnow())
            )
            if self._sqlite:  # fenced: only while this relay still holds the lease
                mark = mark.where(
                    sa.exists().where(
                        outbox_lease.c.name == "relay", outbox_lease.c.holder == self._name
                    )
                )
            if (await conn.execute(mark)).rowcount != len(rows):
                raise LeaseLost("the relay lease passed to another relay mid-batch")
        return len(rows)

    async def oldest_unpublished(self) -> float | None:
        async with self._connection() as conn:
            oldest = (
                await conn.execute(
                    sa.select(sa.func.min(outbox.c.created_at)).where(
                        outbox.c.published_at.is_(None)
                    )
                )
            ).scalar()
        return None if oldest is None else oldest.replace(tzinfo=UTC).timestamp()

    async def delete_published_before(self, before: float, limit: int) -> int:
        cutoff = datetime.fromtimestamp(before, UTC).replace(tzinfo=None)
        async with self._connection() as conn, conn.begin():
            ids = (
                (
                    await conn.execute(
                        sa.select(outbox.c.id)
                        .where(outbox.c.published_at < cutoff)
                        .order_by(outbox.c.id)
                        .limit(limit)
                    )
                )
                .scalars()
                .all()
            )
            if ids:
                await conn.execute(sa.delete(outbox).where(outbox.c.id.in_(ids)))
        return len(ids)

    async def close(self) -> None:
        """Gives up the SQLite lease, if this relay holds it (elsewhere: nothing to do)."""
        if not (self._sqlite and self._lease_until):
            return
        self._lease_until = 0.0
        async with self._connection() as conn, conn.begin():
            await conn.execute(
                sa.delete(outbox_lease).where(
                    outbox_lease.c.name == "relay", outbox_lease.c.holder == self._name
                )
            )

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection of the engine, bounded in time, outside the database's circuit
        breaker (see the module's docstring)."""
        async with asyncio.timeout(PASS_TIMEOUT), self._engine.connect() as conn:
            yield conn

    async def _hold_lease(self) -> bool:
        now = time.time()
        if self._lease_until - now > RENEW_BELOW:
            return True
        until = now + LEASE_SECONDS
        async with self._connection() as conn, conn.begin():
            taken = await conn.execute(
                sa.update(outbox_lease)
                .where(
                    outbox_lease.c.name == "relay",
                    sa.or_(outbox_lease.c.holder == self._name, outbox_lease.c.expires < now),
                )
                .values(holder=self._name, expires=until)
            )
            held = taken.rowcount == 1
            if not held:
                try:
                    async with conn.begin_nested():
                        await conn.execute(
                            sa.insert(outbox_lease).values(
                                name="relay", holder=self._name, expires=until
                            )
                        )
                    held = True
                except IntegrityError:
                    held = False  # someone else holds it
        self._lease_until = until if held else 0.0
        return held


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
