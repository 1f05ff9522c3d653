"""The outbox relay: moves committed outbox rows to the event stream, nothing lost.

A row is marked published only after the stream has stored it, in the transaction that
locked it, so a relay that dies mid-batch leaves the rows unpublished and the next pass
(its own after a restart, or another relay's) publishes them again: at-least-once, the
consumers deduplicate on the event id. Several relays run at once on MariaDB/MySQL and
PostgreSQL: each locks its batch with FOR UPDATE SKIP LOCKED, so two relays never hold the
same row. SQLite has no row locks: there one relay at a time holds a lease (a row in
`outbox_lease`) and the others wait for it to lapse.

Order: each batch is published in row-id order. Batches of two relays may interleave,
and the consumers (mail, audit) do not depend on order.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from surge.backends.sql import connected
from surge.schema import outbox, outbox_lease
from surge.types import Event, Stream

log = logging.getLogger("surge.relay")

LEASE_SECONDS = 10.0
RETENTION_EVERY = 60.0  # seconds between deletions of old published rows


def event_of(row_id: int, topic: str, payload: str, created: datetime) -> Event:
    created_at = created.replace(tzinfo=UTC).timestamp()
    # the row id alone repeats once a database is emptied (SQLite reuses ids), and the
    # consumers would then skip a new order as already handled
    return Event(f"{row_id}.{int(created_at)}", topic, payload.encode(), created_at)


class OutboxRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        stream: Stream,
        name: str,
        batch: int = 500,
        poll: float = 0.2,
        retention: float = 7 * 86_400.0,
    ) -> None:
        self._engine = engine
        self._stream = stream
        self._name = name
        self._batch = batch
        self._poll = poll
        self._retention = retention
        self._sqlite = engine.dialect.name == "sqlite"
        self._lease_until = 0.0
        self._next_cleanup = 0.0
        self.published = 0
        self.errors = 0
        self.lag = 0.0  # seconds: age of the oldest unpublished row, at the last look

    async def run(self, stop: asyncio.Event) -> None:
        """Relays until `stop` is set; a failure (database or stream down) backs off and
        retries, it never ends the loop."""
        backoff = self._poll
        while not stop.is_set():
            try:
                moved = await self.relay_once()
                if moved < self._batch:
                    await self._measure_lag()
                    await self._clean_up()
                backoff = self._poll
            except Exception as exc:
                self.errors += 1
                log.warning("outbox relay: %s (retrying in %.1f s)", exc, backoff)
                moved = 0
                backoff = min(backoff * 2, 5.0)
            if moved < self._batch:
                wait = backoff * random.uniform(0.8, 1.2)
                try:
                    await asyncio.wait_for(stop.wait(), wait)
                except TimeoutError:
                    pass
        await self._give_up_lease()

    async def relay_once(self) -> int:
        """Publishes one batch of unpublished rows; returns how many."""
        if self._sqlite and not await self._hold_lease():
            return 0
        query = (
            sa.select(outbox.c.id, outbox.c.topic, outbox.c.payload, outbox.c.created_at)
            .where(outbox.c.published_at.is_(None))
            .order_by(outbox.c.id)
            .limit(self._batch)
        )
        if not self._sqlite:
            query = query.with_for_update(skip_locked=True)
        async with connected(self._engine) as conn:
            if self._engine.dialect.name == "mysql":
                # REPEATABLE READ would also lock the gap after the last row, and the
                # purchases' outbox inserts would wait for this batch's publish
                conn = await conn.execution_options(isolation_level="READ COMMITTED")
            async with conn.begin():
                rows = (await conn.execute(query)).all()
                if not rows:
                    return 0
                await self._stream.publish([event_of(*row) for row in rows])
                await conn.execute(
                    sa.update(outbox)
                    .where(outbox.c.id.in_([row[0] for row in rows]))
                    .values(published_at=_utcnow())
                )
        self.published += len(rows)
        return len(rows)

    async def _measure_lag(self) -> None:
        async with connected(self._engine) as conn:
            oldest = (
                await conn.execute(
                    sa.select(sa.func.min(outbox.c.created_at)).where(
                        outbox.c.published_at.is_(None)
                    )
                )
            ).scalar()
        self.lag = 0.0 if oldest is None else max(0.0, (_utcnow() - oldest).total_seconds())

    async def _clean_up(self) -> None:
        """Deletes rows published more than `retention` ago, once a minute."""
        now = time.monotonic()
        if now < self._next_cleanup:
            return
        self._next_cleanup = now + RETENTION_EVERY
        cutoff = _utcnow() - timedelta(seconds=self._retention)
        async with connected(self._engine) as conn, conn.begin():
            await conn.execute(sa.delete(outbox).where(outbox.c.published_at < cutoff))
        await self._stream.trim()

    async def _hold_lease(self) -> bool:
        now = time.time()
        if self._lease_until - now > LEASE_SECONDS / 2:
            return True
        until = now + LEASE_SECONDS
        async with connected(self._engine) as conn, conn.begin():
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

    async def _give_up_lease(self) -> None:
        if not (self._sqlite and self._lease_until):
            return
        try:
            async with connected(self._engine) as conn, conn.begin():
                await conn.execute(
                    sa.delete(outbox_lease).where(
                        outbox_lease.c.name == "relay", outbox_lease.c.holder == self._name
                    )
                )
        except Exception as exc:  # it lapses by itself
            log.warning("outbox relay: could not give up the lease: %s", exc)
        self._lease_until = 0.0


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
