"""The relay's loop (surge.work.relay) with an outbox and a stream in this process: no
database, no stream backend. Failures back off and are counted, the rows go out after,
the lag is measured, the retention runs chunk by chunk, the lease is given up on stop.
(The SQL outbox itself: tests/contract/test_relay.py, on every database.)"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import pytest

from surge.ground.events import Event
from surge.ground.interfaces import Publish
from surge.work import relay as relay_module
from surge.work.relay import RETENTION_CHUNK, RETENTION_CHUNKS, OutboxRelay

pytestmark = pytest.mark.anyio


class ListOutbox:
    """Rows in a list, published in order, a batch at a time; `deletable` rows are old
    enough for the retention."""

    def __init__(self, n: int, created: float, deletable: int = 0) -> None:
        self.events = [Event(f"{i}.{int(created)}", "t", b"{}", created) for i in range(n)]
        self.published = 0  # the first `published` events are marked
        self.deletable = deletable
        self.deletes: list[tuple[float, int]] = []
        self.closed = False
        self.close_fails = False

    async def relay_batch(self, limit: int, publish: Publish) -> int:
        batch = self.events[self.published : self.published + limit]
        if batch:
            await publish(batch)  # raises: nothing marked
            self.published += len(batch)
        return len(batch)

    async def oldest_unpublished(self) -> float | None:
        left = self.events[self.published :]
        return left[0].created if left else None

    async def delete_published_before(self, before: float, limit: int) -> int:
        self.deletes.append((before, limit))
        deleted = min(limit, self.deletable)
        self.deletable -= deleted
        return deleted

    async def close(self) -> None:
        if self.close_fails:
            raise ConnectionError("database down")
        self.closed = True


class Stream:
    """Stores what it is given; fails the first `failures` publishes."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.batches: list[list[str]] = []
        self.attempts: list[float] = []
        self.trims = 0

    async def publish(self, events: Sequence[Event]) -> None:
        self.attempts.append(time.monotonic())
        if len(self.attempts) <= self.failures:
            raise ConnectionError("stream down")
        self.batches.append([e.id for e in events])

    async def trim(self) -> None:
        self.trims += 1


async def run_until(relay: OutboxRelay, done: Callable[[], bool]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        async with asyncio.timeout(5):
            while not done():  # noqa: ASYNC110 (polling what the relay does)
                await asyncio.sleep(0.005)
    finally:
        stop.set()
        await task


async def test_a_failed_publish_is_counted_backed_off_and_relayed_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outbox = ListOutbox(25, time.time())
    stream = Stream(failures=1)
    relay = OutboxRelay(outbox, stream, batch=10, poll=0.1)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, "surge.relay"):
        await run_until(relay, lambda: relay.published == 25)
    assert relay.errors == 1
    assert [len(b) for b in stream.batches] == [10, 10, 5]  # in order, none lost
    assert [i for b in stream.batches for i in b] == [e.id for e in outbox.events]
    # after the failure the poll interval doubled (times a jitter in [0.8, 1.2])
    assert stream.attempts[1] - stream.attempts[0] >= 0.2 * 0.8
    assert "outbox relay: stream down (retrying in 0.1 s)" in caplog.messages
    assert outbox.closed  # the lease given up on stop


async def test_the_lag_is_the_age_of_the_oldest_row_and_grows_while_the_stream_is_down() -> None:
    outbox = ListOutbox(2, time.time() - 90)
    relay = OutboxRelay(outbox, Stream(failures=1_000), poll=0.01)  # type: ignore[arg-type]
    await run_until(relay, lambda: relay.errors >= 2)
    assert 89 <= relay.lag <= 95
    assert relay.published == 0 and outbox.published == 0

    relay = OutboxRelay(ListOutbox(0, time.time() - 90), Stream(), poll=0.01)  # type: ignore[arg-type]
    relay.lag = 12.0
    await relay._measure_lag()
    assert relay.lag == 0.0  # nothing waiting


async def test_retention_runs_once_a_minute_chunk_by_chunk() -> None:
    outbox = ListOutbox(0, time.time(), deletable=2 * RETENTION_CHUNK + 3)
    stream = Stream()
    relay = OutboxRelay(outbox, stream, poll=0.01, retention=3600.0)  # type: ignore[arg-type]
    started = time.time()
    await run_until(relay, lambda: stream.trims == 1)
    await asyncio.sleep(0.05)  # more passes: the next retention is a minute away
    assert stream.trims == 1
    assert [limit for _, limit in outbox.deletes] == [RETENTION_CHUNK] * 3  # until a short one
    cutoff = outbox.deletes[0][0]
    assert started - 3600.0 <= cutoff <= time.time() - 3600.0
    assert {before for before, _ in outbox.deletes} == {cutoff}  # one cutoff for the run


async def test_retention_deletes_at_most_its_chunks_a_minute() -> None:
    outbox = ListOutbox(0, time.time(), deletable=10**9)
    relay = OutboxRelay(outbox, Stream(), poll=0.01)  # type: ignore[arg-type]
    await relay._delete_published()
    assert len(outbox.deletes) == RETENTION_CHUNKS


async def test_an_outbox_that_cannot_give_up_its_lease_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outbox = ListOutbox(0, time.time())
    outbox.close_fails = True
    relay = OutboxRelay(outbox, Stream(), poll=0.01)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, relay_module.log.name):
        await run_until(relay, lambda: True)
    assert "outbox relay: could not give up the lease: database down" in caplog.messages
