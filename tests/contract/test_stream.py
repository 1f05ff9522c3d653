"""The event stream's contract, on Redis Streams and on the embedded SQLite file."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from surge.ground.events import Event
from surge.ground.interfaces import Stream
from tests.backends import REDIS_KINDS, shared_redis_url

pytestmark = pytest.mark.anyio

GROUPS = ("mail", "audit")


@pytest.fixture(params=["sqlite", *REDIS_KINDS])
async def stream(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stream]:
    made: Stream
    if request.param == "sqlite":
        from surge.backends.sqlite_stream import SqliteStream

        made = SqliteStream(tmp_path / "events.db", dedup_ttl=60)
        await made.prepare(GROUPS)
        yield made
        await made.close()
        return
    from surge.backends.redis import connect
    from surge.backends.redis_stream import RedisStream

    client = connect(shared_redis_url(request.param), 4, command_timeout=3.0)
    prefix = f"surge-test-{uuid.uuid4().hex[:12]}:"
    made = RedisStream(client, prefix, dedup_ttl=60)
    await made.prepare(GROUPS)
    yield made
    await client.delete(made.key, made.dead_key)
    await client.aclose()


def events(n: int, start: int = 1) -> list[Event]:
    return [
        Event(f"{i}.1700000000", "order.confirmed", b'{"order_id": %d}' % i, 1.7e9)
        for i in range(start, start + n)
    ]


async def test_every_group_reads_every_event_once_in_order(stream: Stream) -> None:
    await stream.publish(events(5))
    for group in GROUPS:
        got = await stream.read(group, "c1", 10, 0.1)
        assert [d.event.id for d in got] == [e.id for e in events(5)]
        assert got[0].event == events(1)[0]
        assert await stream.read(group, "c2", 10, 0.1) == []  # delivered to c1 already
        assert await stream.pending(group) == 5


async def test_a_blocked_read_wakes_for_a_publish(stream: Stream) -> None:
    reader = asyncio.create_task(stream.read("mail", "c1", 10, 3.0))
    await asyncio.sleep(0.2)
    started = asyncio.get_running_loop().time()
    await stream.publish(events(1))
    got = await reader
    assert [d.event.id for d in got] == ["1.1700000000"]
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_ack_marks_done_and_clears_pending(stream: Stream) -> None:
    await stream.publish(events(2))
    first, second = await stream.read("mail", "c1", 10, 0.1)
    assert not await stream.done("mail", first.event.id)
    await stream.ack("mail", first)
    await stream.ack("mail", second, handled=False)  # skipped: not marked done
    assert await stream.done("mail", first.event.id)
    assert not await stream.done("audit", first.event.id)  # per group
    assert not await stream.done("mail", second.event.id)
    assert await stream.pending("mail") == 0
    assert await stream.pending("audit") == 2  # unread there


async def test_stale_entries_are_claimed_fresh_ones_are_not(stream: Stream) -> None:
    await stream.publish(events(3))
    held = await stream.read("mail", "dead-worker", 3, 0.1)
    assert await stream.claim_stale("mail", "c2", 5.0, 10) == []  # not idle long enough
    await asyncio.sleep(0.3)
    await stream.touch("mail", "dead-worker", [held[0].entry])  # still being worked on
    claimed = await stream.claim_stale("mail", "c2", 0.2, 10)
    assert sorted(d.event.id for d in claimed) == sorted(d.event.id for d in held[1:])
    # released entries are claimable at once, whatever the idle time asked for
    await stream.release("mail", "dead-worker", [held[0].entry])
    again = await stream.claim_stale("mail", "c3", 30.0, 10)
    assert [d.event.id for d in again] == [held[0].event.id]


async def test_failures_are_counted_and_a_buried_event_can_be_replayed(stream: Stream) -> None:
    await stream.publish(events(2))
    poison, fine = await stream.read("mail", "c1", 10, 0.1)
    assert [await stream.failed("mail", poison) for _ in range(3)] == [1, 2, 3]
    await stream.bury("mail", poison, "ValueError: bad payload", 3)
    assert await stream.pending("mail") == 1  # the fine one
    (letter,) = await stream.dead_letters(10)
    assert (letter.event, letter.group, letter.attempts) == (poison.event, "mail", 3)
    assert letter.error == "ValueError: bad payload"
    assert await stream.dead_count() == 1

    assert await stream.replay([letter.entry, letter.entry]) == 1  # gone after the first
    assert await stream.dead_count() == 0
    await stream.ack("mail", fine)
    (replayed,) = await stream.read("mail", "c1", 10, 0.1)
    assert replayed.event == poison.event and replayed.only == "mail"
    assert await stream.failed("mail", replayed) == 1  # the count starts again
    # the other group reads the replay too, marked as not its own
    audit = await stream.read("audit", "c1", 10, 0.1)
    assert [d.only for d in audit] == [None, None, "mail"]


async def test_trim_keeps_what_a_group_still_needs(stream: Stream) -> None:
    await stream.publish(events(4))
    for d in await stream.read("mail", "c1", 4, 0.1):
        await stream.ack("mail", d)
    audit = await stream.read("audit", "c1", 2, 0.1)  # two read, not acknowledged
    await stream.trim()
    assert await stream.pending("audit") == 4
    for d in audit:
        await stream.ack("audit", d)
    rest = await stream.read("audit", "c1", 10, 0.1)
    assert [d.event.id for d in rest] == [e.id for e in events(2, start=3)]


async def test_the_sqlite_stream_survives_a_restart(tmp_path: Path) -> None:
    from surge.backends.sqlite_stream import SqliteStream

    first = SqliteStream(tmp_path / "events.db", dedup_ttl=60)
    await first.prepare(GROUPS)
    await first.publish(events(3))
    held = await first.read("mail", "c1", 1, 0.1)
    await first.close()
    second = SqliteStream(tmp_path / "events.db", dedup_ttl=60)
    try:
        await second.prepare(GROUPS)  # idempotent: the groups keep their place
        assert await second.pending("mail") == 3
        rest = await second.read("mail", "c2", 10, 0.1)
        assert [d.event.id for d in rest] == [e.id for e in events(2, start=2)]
        claimed = await second.claim_stale("mail", "c2", 0.0, 10)
        assert [d.event.id for d in claimed if d.entry == held[0].entry] == [held[0].event.id]
    finally:
        await second.close()


async def test_touch_and_release_leave_an_entry_another_consumer_took(stream: Stream) -> None:
    await stream.publish(events(1))
    (held,) = await stream.read("mail", "stalled", 1, 0.1)
    await asyncio.sleep(0.3)
    (taken,) = await stream.claim_stale("mail", "rescuer", 0.2, 10)
    await stream.touch("mail", "stalled", [held.entry])  # the stalled one wakes up
    await stream.release("mail", "stalled", [held.entry])
    # still the rescuer's, not idle: nobody else may take it
    assert await stream.claim_stale("mail", "third", 0.2, 10) == []
    assert taken.event == held.event


async def test_a_malformed_dead_letter_id_is_not_found(stream: Stream) -> None:
    assert await stream.replay(["not-an-id", "12a", ""]) == 0


@pytest.mark.parametrize("kind", REDIS_KINDS)
async def test_lost_groups_are_made_again_on_first_use(kind: str) -> None:
    """Redis restarted without persistence (or the key was flushed or evicted) while the
    relay kept publishing: the consumers make the groups again and miss nothing."""
    from surge.backends.redis import connect
    from surge.backends.redis_stream import RedisStream

    client = connect(shared_redis_url(kind), 4, command_timeout=3.0)
    stream = RedisStream(client, f"surge-test-{uuid.uuid4().hex[:12]}:", dedup_ttl=60)
    try:
        await stream.prepare(GROUPS)
        await client.delete(stream.key)  # the groups go with it
        await stream.publish(events(2))  # XADD makes a stream without groups
        with pytest.raises(LookupError):
            await stream.pending("mail")  # readiness sees it
        got = await stream.read("mail", "c1", 10, 0.1)
        assert [d.event.id for d in got] == [e.id for e in events(2)]
        assert await stream.pending("audit") == 2  # every group made again
    finally:
        await client.delete(stream.key)
        await client.aclose()


@pytest.mark.parametrize("kind", REDIS_KINDS)
async def test_a_stopping_consumer_is_forgotten_only_when_it_holds_nothing(kind: str) -> None:
    from surge.backends.redis import connect
    from surge.backends.redis_stream import RedisStream

    client = connect(shared_redis_url(kind), 4, command_timeout=3.0)
    stream = RedisStream(client, f"surge-test-{uuid.uuid4().hex[:12]}:", dedup_ttl=60)
    try:
        await stream.prepare(GROUPS)
        await stream.publish(events(2))
        done, held = await stream.read("mail", "holder", 2, 0.1)
        (other,) = await stream.read("audit", "idle", 1, 0.1)
        await stream.ack("mail", done)
        await stream.ack("audit", other)
        await stream.forget("mail", "holder")  # still holds `held`: kept
        await stream.forget("audit", "idle")  # holds nothing: dropped
        names = {
            group: {c["name"].decode() for c in await client.xinfo_consumers(stream.key, group)}
            for group in GROUPS
        }
        assert names == {"mail": {"holder"}, "audit": set()}
        assert await stream.pending("mail") == 1 and held.event == events(2)[1]
    finally:
        await client.delete(stream.key)
        await client.aclose()
