"""The outbox relay on every database (the SQL outbox, surge.backends.sql_outbox, under
the relay's loop): in order, nothing lost, shared by several relays."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from surge import db
from surge.backends.sql import create_engine
from surge.backends.sql_outbox import LeaseLost, SqlOutbox
from surge.backends.sqlite_stream import SqliteStream
from surge.ground.events import Event
from surge.schema import outbox, outbox_lease
from surge.work.relay import OutboxRelay
from tests.backends import Backend

pytestmark = pytest.mark.anyio


class Recorder:
    """A stream that keeps what it is given (optionally slowly, or failing)."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.events: list[Event] = []
        self.delay = delay
        self.fail = fail

    async def publish(self, events: Sequence[Event]) -> None:
        await asyncio.sleep(self.delay)
        if self.fail:
            raise ConnectionError("stream down")
        self.events.extend(events)

    async def trim(self) -> None:
        pass


@pytest.fixture
async def engine(backend: Backend) -> AsyncIterator[AsyncEngine]:
    await asyncio.to_thread(db.migrate, backend.database_url)
    made = create_engine(backend.database_url, pool_size=8)
    yield made
    await made.dispose()


async def add_rows(engine: AsyncEngine, n: int, created: datetime | None = None) -> list[int]:
    created = created or datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    async with engine.begin() as conn:
        await conn.execute(
            sa.insert(outbox),
            [
                {"topic": "order.confirmed", "payload": f'{{"n": {i}}}', "created_at": created}
                for i in range(n)
            ],
        )
        rows = await conn.execute(sa.select(outbox.c.id).order_by(outbox.c.id))
        return [row[0] for row in rows]


async def unpublished(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        query = sa.select(sa.func.count()).where(outbox.c.published_at.is_(None))
        return int((await conn.execute(query)).scalar_one())


async def test_rows_are_relayed_in_order_and_marked(engine: AsyncEngine) -> None:
    ids = await add_rows(engine, 120)
    stream = Recorder()
    relay = OutboxRelay(SqlOutbox(engine, "r1"), stream, batch=50)  # type: ignore[arg-type]
    assert [await relay.relay_once() for _ in range(4)] == [50, 50, 20, 0]
    assert [e.id.split(".")[0] for e in stream.events] == [str(i) for i in ids]
    assert stream.events[0].payload == b'{"n": 0}'
    assert await unpublished(engine) == 0
    assert relay.published == 120


async def test_a_failed_publish_marks_nothing(engine: AsyncEngine) -> None:
    await add_rows(engine, 10)
    down = Recorder(fail=True)
    with pytest.raises(ConnectionError):
        await SqlOutbox(engine, "r1").relay_batch(500, down.publish)
    assert await unpublished(engine) == 10
    up = Recorder()  # the stream is back (same relay name: on SQLite it holds the lease)
    assert await SqlOutbox(engine, "r1").relay_batch(500, up.publish) == 10
    assert len(up.events) == 10


async def test_several_relays_publish_each_row_once(engine: AsyncEngine) -> None:
    await add_rows(engine, 600)
    stream = Recorder(delay=0.02)  # batches overlap in time
    published = {f"r{i}": 0 for i in range(3)}

    async def drain(name: str) -> None:
        outbox = SqlOutbox(engine, name)
        while await unpublished(engine):
            published[name] += await outbox.relay_batch(40, stream.publish)
            await asyncio.sleep(0)

    await asyncio.gather(*(drain(f"r{i}") for i in range(3)))
    counts = Counter(e.id for e in stream.events)
    assert len(counts) == 600 and set(counts.values()) == {1}
    if engine.dialect.name == "sqlite":  # the lease: one relay did everything
        assert sorted(published.values())[:2] == [0, 0]
    else:  # SKIP LOCKED: they shared the work
        assert sum(1 for n in published.values() if n) >= 2


async def test_lag_and_retention(engine: AsyncEngine, tmp_path: Path) -> None:
    old = datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(seconds=30)
    await add_rows(engine, 3, created=old)
    stream = SqliteStream(tmp_path / "events.db", 60)
    await stream.prepare(["mail"])
    sql = SqlOutbox(engine, "r1")
    relay = OutboxRelay(sql, stream, retention=0.5)
    try:
        oldest = await sql.oldest_unpublished()
        assert oldest == old.replace(tzinfo=UTC).timestamp()
        await relay._measure_lag()
        assert 29 <= relay.lag <= 40
        assert await relay.relay_once() == 3
        assert await sql.oldest_unpublished() is None
        await relay._measure_lag()
        assert relay.lag == 0.0
        assert await sql.delete_published_before(time.time() - 60, 1000) == 0  # too recent
        await asyncio.sleep(1.1)  # DATETIME keeps whole seconds on MariaDB
        await relay._delete_published()
        async with engine.connect() as conn:
            left = (await conn.execute(sa.select(sa.func.count()).select_from(outbox))).scalar()
        assert left == 0
    finally:
        await stream.close()


async def test_the_lag_grows_while_the_stream_is_down(engine: AsyncEngine) -> None:
    old = datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(seconds=90)
    await add_rows(engine, 2, created=old)
    relay = OutboxRelay(SqlOutbox(engine, "r1"), Recorder(fail=True), poll=0.05)  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        async with asyncio.timeout(5):
            while relay.errors < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task
    assert relay.lag >= 89  # what an alert on outbox_lag_seconds needs to see
    assert await unpublished(engine) == 2


async def test_a_relay_that_lost_its_sqlite_lease_marks_nothing(tmp_path: Path) -> None:
    """SQLite only (the others lock rows): the lease passes to another relay while a batch
    is in flight, and the batch is rolled back rather than marked."""
    url = f"sqlite:///{tmp_path / 'surge.db'}"
    await asyncio.to_thread(db.migrate, url)
    engine = create_engine(url, pool_size=4)
    try:
        await add_rows(engine, 5)

        class Usurped(Recorder):
            async def publish(self, events: Sequence[Event]) -> None:
                await super().publish(events)
                async with engine.begin() as conn:
                    await conn.execute(sa.update(outbox_lease).values(holder="r2"))

        relay = OutboxRelay(SqlOutbox(engine, "r1"), Usurped())  # type: ignore[arg-type]
        with pytest.raises(LeaseLost):
            await relay.relay_once()
        assert await unpublished(engine) == 5  # r2 publishes them
        assert relay.published == 0
    finally:
        await engine.dispose()


async def test_a_stopping_relay_hands_the_sqlite_lease_over_at_once(tmp_path: Path) -> None:
    """SQLite only: while r1 holds the lease r2 relays nothing; once r1 closed (gave it up)
    r2 takes it at once instead of waiting for it to lapse."""
    url = f"sqlite:///{tmp_path / 'surge.db'}"
    await asyncio.to_thread(db.migrate, url)
    engine = create_engine(url, pool_size=4)
    try:
        await add_rows(engine, 3)
        one, two, stream = SqlOutbox(engine, "r1"), SqlOutbox(engine, "r2"), Recorder()
        assert await one.relay_batch(2, stream.publish) == 2
        assert await two.relay_batch(2, stream.publish) == 0  # r1 holds the lease
        await one.close()
        assert await two.relay_batch(2, stream.publish) == 1
        await two.close()
        async with engine.connect() as conn:
            held = (
                await conn.execute(sa.select(sa.func.count()).select_from(outbox_lease))
            ).scalar()
        assert held == 0
    finally:
        await engine.dispose()
