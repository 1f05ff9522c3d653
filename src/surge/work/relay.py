"""The outbox relay: moves committed outbox rows to the event stream, nothing lost.

The loop is here (polling, back-off, the lag gauge, the retention schedule, the
metrics); what it does in the database is the `Outbox` (backends/sql_outbox.py). A row
is marked published only after the stream has stored it, in the transaction that locked
it (`Outbox.relay_batch`), so a relay that dies mid-batch leaves the rows unpublished and
the next pass (its own after a restart, or another relay's) publishes them again:
at-least-once, the consumers deduplicate on the event id. Several relays may run at once:
the outbox never hands the same row to two of them at the same time.

Order: each batch is published in row-id order. Batches of two relays may interleave,
and the consumers (mail, audit) do not depend on order.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from surge.ground.interfaces import Outbox, Stream

log = logging.getLogger("surge.relay")

RETENTION_EVERY = 60.0  # seconds between deletions of old published rows
RETENTION_CHUNK = 1000
RETENTION_CHUNKS = 50  # per minute at most: 50,000 rows


class OutboxRelay:
    def __init__(
        self,
        outbox: Outbox,
        stream: Stream,
        batch: int = 500,
        poll: float = 0.2,
        retention: float = 7 * 86_400.0,
    ) -> None:
        self._outbox = outbox
        self._stream = stream
        self._batch = batch
        self._poll = poll
        self._retention = retention
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
        await self._give_up()

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
        moved = await self._outbox.relay_batch(self._batch, self._stream.publish)
        self.published += moved
        return moved

    async def _measure_lag(self) -> None:
        oldest = await self._outbox.oldest_unpublished()
        self.lag = 0.0 if oldest is None else max(0.0, time.time() - oldest)

    async def _delete_published(self) -> None:
        """Deletes rows published more than `retention` ago, a chunk at a time (a week
        after a big sale there may be a million)."""
        before = time.time() - self._retention
        for _ in range(RETENTION_CHUNKS):
            deleted = await self._outbox.delete_published_before(before, RETENTION_CHUNK)
            if deleted < RETENTION_CHUNK:
                return

    async def _give_up(self) -> None:
        """Lets another relay take over at once (the SQLite lease)."""
        try:
            await self._outbox.close()
        except Exception as exc:  # it lapses by itself
            log.warning("outbox relay: could not give up the lease: %s", exc)
