"""The consumer loop: dedup, retries with back-off, dead letters, pauses, take-over, drain
(on the embedded SQLite stream, which the contract suite shows behaves like Redis's)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from surge.backends.sqlite_stream import SqliteStream
from surge.ground.events import Delivery, Event
from surge.work.consumer import Consumer, RetryPolicy, Unavailable

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(max_attempts=3, base=0.01, cap=0.05, pause_cap=0.2)


@pytest.fixture
async def stream(tmp_path: Path) -> AsyncIterator[SqliteStream]:
    made = SqliteStream(tmp_path / "events.db", dedup_ttl=60)
    await made.prepare(["mail", "audit"])
    yield made
    await made.close()


def event(i: int) -> Event:
    return Event(f"{i}.1", "order.confirmed", b"{}", 1.0)


def consumer(
    stream: SqliteStream, handler: Callable[[Event], Awaitable[None]], **kwargs: object
) -> Consumer:
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("read_block", 0.05)
    return Consumer("mail", handler, stream, "c1", **kwargs)  # type: ignore[arg-type]


async def run_until(c: Consumer, done: Callable[[], bool], seconds: float = 5.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(c.run(stop, drain_timeout=1.0))
    try:
        async with asyncio.timeout(seconds):
            while not done():  # noqa: ASYNC110 (polling what the consumer does)
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await task


async def test_each_event_is_handled_once_and_duplicates_are_skipped(
    stream: SqliteStream,
) -> None:
    seen: Counter[str] = Counter()

    async def handle(e: Event) -> None:
        seen[e.id] += 1

    await stream.publish([event(i) for i in range(20)] + [event(3), event(7)])
    c = consumer(stream, handle)
    await run_until(c, lambda: c.stats.handled + c.stats.duplicates == 22)
    assert seen == Counter({event(i).id: 1 for i in range(20)})
    assert (c.stats.handled, c.stats.duplicates) == (20, 2)
    assert await stream.pending("mail") == 0


async def test_a_failing_event_is_retried_with_backoff_then_succeeds(
    stream: SqliteStream,
) -> None:
    calls: list[float] = []

    async def flaky(_e: Event) -> None:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) < 3:
            raise RuntimeError("not yet")

    await stream.publish([event(1)])
    c = consumer(stream, flaky, retry=RetryPolicy(max_attempts=5, base=0.1, cap=1.0))
    await run_until(c, lambda: c.stats.handled == 1)
    assert (c.stats.failures, c.stats.retries, c.stats.dead_letters) == (2, 2, 0)
    # waits of base * 2^(n-1) times a jitter factor in [0.5, 1]
    assert 0.05 <= calls[1] - calls[0] <= 0.2
    assert 0.1 <= calls[2] - calls[1] <= 0.35
    assert await stream.dead_count() == 0


async def test_a_poison_event_goes_to_the_dead_letters_and_the_rest_flow(
    stream: SqliteStream,
) -> None:
    handled: list[str] = []

    async def handle(e: Event) -> None:
        if e.id == event(2).id:
            raise ValueError("cannot parse")
        handled.append(e.id)

    await stream.publish([event(1), event(2), event(3)])
    c = consumer(stream, handle)
    await run_until(c, lambda: c.stats.dead_letters == 1 and len(handled) == 2)
    (letter,) = await stream.dead_letters(10)
    assert letter.event == event(2)
    assert (letter.group, letter.attempts) == ("mail", 3)
    assert letter.error == "ValueError: cannot parse"
    assert await stream.pending("mail") == 0


async def test_an_unavailable_dependency_pauses_without_counting_failures(
    stream: SqliteStream,
) -> None:
    loop = asyncio.get_running_loop()
    back_at = loop.time() + 0.6
    attempts: Counter[str] = Counter()

    async def handle(e: Event) -> None:
        attempts[e.id] += 1
        if loop.time() < back_at:
            raise Unavailable("SMTP down")

    await stream.publish([event(i) for i in range(10)])
    c = consumer(stream, handle)
    await run_until(c, lambda: c.stats.handled == 10)
    assert (c.stats.failures, c.stats.dead_letters) == (0, 0)
    assert c.stats.unavailable >= 1
    # the pause holds everyone back: far fewer attempts than a busy loop would make
    assert sum(attempts.values()) < 60


async def test_a_dead_consumers_events_are_taken_over(stream: SqliteStream) -> None:
    await stream.publish([event(i) for i in range(5)])
    await stream.read("mail", "crashed", 3, 0.1)  # read, never acknowledged
    handled: list[str] = []

    async def handle(e: Event) -> None:
        handled.append(e.id)

    c = consumer(stream, handle, min_idle=0.3, claim_every=0.1)
    await run_until(c, lambda: len(handled) == 5)
    assert sorted(handled) == sorted(event(i).id for i in range(5))


async def test_stopping_hands_back_what_is_in_flight(stream: SqliteStream) -> None:
    started = asyncio.Event()

    async def stuck(_e: Event) -> None:
        started.set()
        await asyncio.sleep(3600)

    await stream.publish([event(1)])
    c = consumer(stream, stuck, min_idle=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(c.run(stop, drain_timeout=0.2))
    await asyncio.wait_for(started.wait(), 5)
    stop.set()
    await asyncio.wait_for(task, 5)
    # handed back: another consumer takes it at once despite the hour of min_idle
    (taken,) = await stream.claim_stale("mail", "c2", 3600, 10)
    assert taken.event == event(1)


async def test_a_replay_for_another_group_is_skipped(stream: SqliteStream) -> None:
    await stream.publish([event(1)])
    (delivery,) = await stream.read("audit", "x", 1, 0.1)
    await stream.bury("audit", delivery, "boom", 3)
    (letter,) = await stream.dead_letters(1)
    await stream.replay([letter.entry])
    handled: list[str] = []

    async def handle(e: Event) -> None:
        handled.append(e.id)

    c = consumer(stream, handle)  # the mail group: reads the original and the replay
    stop = asyncio.Event()
    task = asyncio.create_task(c.run(stop, drain_timeout=1.0))
    async with asyncio.timeout(5):
        while await stream.pending("mail"):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    stop.set()
    await task
    assert handled == [event(1).id]
    assert (c.stats.handled, c.stats.duplicates) == (1, 0)


async def test_an_ack_that_fails_is_retried_not_redone(stream: SqliteStream) -> None:
    real_ack = stream.ack
    failures = [RuntimeError("stream down"), RuntimeError("stream down")]

    async def flaky_ack(group: str, delivery: Delivery, handled: bool = True) -> None:
        if handled and failures:
            raise failures.pop()
        await real_ack(group, delivery, handled)

    stream.ack = flaky_ack  # type: ignore[method-assign]
    calls: Counter[str] = Counter()

    async def handle(e: Event) -> None:
        calls[e.id] += 1

    await stream.publish([event(1)])
    c = consumer(stream, handle, min_idle=0.2, claim_every=0.05)
    await run_until(c, lambda: c.stats.handled == 1)
    await asyncio.sleep(0.4)  # past min_idle: nothing left pending to take over
    assert calls == Counter({event(1).id: 1})
    assert await stream.done("mail", event(1).id)
    assert await stream.pending("mail") == 0


async def test_unavailable_for_one_event_while_others_pass_counts_against_it(
    stream: SqliteStream,
) -> None:
    async def handle(e: Event) -> None:
        if e.id == event(0).id:
            raise Unavailable("the server drops the connection on this message")
        await asyncio.sleep(0.01)

    await stream.publish([event(i) for i in range(40)])
    c = consumer(stream, handle, concurrency=4)
    await run_until(c, lambda: c.stats.dead_letters == 1 and c.stats.handled == 39, 10)
    (letter,) = await stream.dead_letters(10)
    assert letter.event == event(0) and letter.attempts == 3


async def test_stopping_keeps_what_was_done_but_not_acknowledged(stream: SqliteStream) -> None:
    async def ack_down(group: str, delivery: Delivery, handled: bool = True) -> None:
        raise RuntimeError("stream down")

    handled: list[str] = []

    async def handle(e: Event) -> None:
        handled.append(e.id)

    await stream.publish([event(1)])
    real_ack = stream.ack
    stream.ack = ack_down  # type: ignore[method-assign]
    c = consumer(stream, handle, min_idle=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(c.run(stop, drain_timeout=0.2))
    async with asyncio.timeout(5):
        while not handled:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    stop.set()
    await task
    stream.ack = real_ack  # type: ignore[method-assign]
    # not handed back (it would be sent again at once): still held, for min_idle
    assert await stream.claim_stale("mail", "c2", 3600, 10) == []
    assert await stream.pending("mail") == 1
