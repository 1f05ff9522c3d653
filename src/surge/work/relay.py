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
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from surge.ground.events import Event
from surge.ground.interfaces import Stream
from surge.schema import outbox, outbox_lease

log = logging.getLogger("surge.relay")

LEASE_SECONDS = 30.0  # renewed when less than RENEW_BELOW is left
RENEW_BELOW = 20.0  # more than a pass can take (PASS_TIMEOUT)
PASS_TIMEOUT = 10.0
RETENTION_EVERY = 60.0  # seconds between deletions of old published rows
RETENTION_CHUNK = 1000
RETENTION_CHUNKS = 50  # per minute at most: 50,000 rows


class LeaseLost(Exception):
    """Another relay holds the SQLite lease now: this batch is rolled back."""


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
        self._next_lag = 0.0
        self.published = 0
        self.errors = 0
        self.lag = 0.0  # seconds: age of the oldest unpublished row, at the last look

    async def run(self, stop: asyncio.Event) -> None:
        """Relays until `stop` is set; a failure (database or stream down) backs off and
        retries, it never ends the loop."""
        backoff = self._poll
        while not stop.is_set():
            moved = 0
            try:
                moved = await self.relay_once()
                backoff = self._poll
            except Exception as exc:
                self.errors += 1
                log.warning("outbox relay: %s (retrying in %.1f s)", exc, backoff)
                backoff = min(backoff * 2, 5.0)
            await self._housekeeping()
            if moved < self._batch:
                try:
                    await asyncio.wait_for(stop.wait(), backoff * random.uniform(0.8, 1.2))
                except TimeoutError:
                    pass
        await self._give_up_lease()

    async def _housekeeping(self) -> None:
        """The lag gauge (at most once a second, whatever the relay's luck: a relay that
        cannot publish is exactly when it must grow) and the retention, once a minute."""
        now = time.monotonic()
        if now >= self._next_lag:
            self._next_lag = now + 1.0
            try:
                await self._measure_lag()
            except Exception as exc:
                log.debug("outbox lag: %s", exc)
        if now >= self._next_cleanup:
            self._next_cleanup = now + RETENTION_EVERY
            try:
                await self._delete_published()
            except Exception as exc:
                log.warning("outbox retention: %s", exc)
            try:
                await self._stream.trim()
            except Exception as exc:
                log.warning("stream trim: %s", exc)

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
            # the engine runs MariaDB in READ COMMITTED (surge.backends.sql): the lock
            # takes these rows only, not the gap where purchases insert new ones
            query = query.with_for_update(skip_locked=True)
        async with self._connection() as conn, conn.begin():
            rows = (await conn.execute(query)).all()
            if not rows:
                return 0
            await self._stream.publish([event_of(*row) for row in rows])
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
        self.published += len(rows)
        return len(rows)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection of the engine, bounded in time, outside the database's circuit
        breaker: a slow stream inside the batch's transaction is not the database being
        down, and in `surge serve` (inline) that breaker guards the purchases."""
        async with asyncio.timeout(PASS_TIMEOUT), self._engine.connect() as conn:
            yield conn

    async def _measure_lag(self) -> None:
        async with self._connection() as conn:
            oldest = (
                await conn.execute(
                    sa.select(sa.func.min(outbox.c.created_at)).where(
                        outbox.c.published_at.is_(None)
                    )
                )
            ).scalar()
        self.lag = 0.0 if oldest is None else max(0.0, (_utcnow() - oldest).total_seconds())

    async def _delete_published(self) -> None:
        """Deletes rows published more than `retention` ago, a chunk at a time (a week
        after a big sale there may be a million)."""
        cutoff = _utcnow() - timedelta(seconds=self._retention)
        for _ in range(RETENTION_CHUNKS):
            async with self._connection() as conn, conn.begin():
                ids = (
                    (
                        await conn.execute(
                            sa.select(outbox.c.id)
                            .where(outbox.c.published_at < cutoff)
                            .order_by(outbox.c.id)
                            .limit(RETENTION_CHUNK)
                        )
                    )
                    .scalars()
                    .all()
                )
                if ids:
                    await conn.execute(sa.delete(outbox).where(outbox.c.id.in_(ids)))
            if len(ids) < RETENTION_CHUNK:
                return

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

    async def _give_up_lease(self) -> None:
        if not (self._sqlite and self._lease_until):
            return
        try:
            async with self._connection() as conn, conn.begin():
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
