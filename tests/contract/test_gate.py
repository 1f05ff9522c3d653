"""The stock gate's contract, in-process and in Redis: the same outcomes, and exactly S."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from surge.backends.redis import connect
from surge.backends.redis_gate import RedisGate
from surge.gate import Confirmed, Gate, GateState, MemoryGate
from tests.backends import REDIS, require_service

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def _redis_gate() -> AsyncIterator[RedisGate]:
    require_service("Redis", REDIS)
    client = connect(f"redis://{REDIS[0]}:{REDIS[1]}/0", pool_size=64)
    prefix = f"surge-test-{uuid.uuid4().hex[:12]}:"
    try:
        yield RedisGate(client, prefix)
    finally:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def gate(request: pytest.FixtureRequest) -> AsyncIterator[Gate]:
    if request.param == "memory":
        yield MemoryGate()
        return
    async with _redis_gate() as made:
        yield made


def _state(
    sale_id: int,
    stock: int,
    limit: int = 1,
    live: bool = True,
    bought: dict[str, int] | None = None,
) -> GateState:
    now = int(time.time() * 1000)
    starts = now - 60_000 if live else now + 60_000
    return GateState(sale_id, stock, limit, starts, starts + 3_600_000, bought or {})


async def test_outcomes(gate: Gate) -> None:
    assert (await gate.reserve(1, "u", "k", 1, "f")).outcome == "unknown"
    assert await gate.load(_state(1, stock=3, limit=2))
    assert not await gate.load(_state(1, stock=99))  # an existing gate is kept
    first = await gate.reserve(1, "u", "k1", 1, "f1")
    assert (first.outcome, first.remaining) == ("ok", 2)
    assert (await gate.reserve(1, "u", "k1", 1, "f1")).outcome == "in_flight"
    assert (await gate.reserve(1, "u", "k1", 2, "other")).outcome == "mismatch"
    await gate.confirm(1, [Confirmed("u", "k1", "f1", 41)])
    done = await gate.reserve(1, "u", "k1", 1, "f1")
    assert (done.outcome, done.order_id) == ("done", 41)
    assert (await gate.reserve(1, "u", "k2", 2, "f2")).outcome == "limit"
    assert (await gate.reserve(1, "u", "k2", 1, "f2")).outcome == "ok"
    assert (await gate.reserve(1, "v", "k", 2, "f")).outcome == "sold_out"
    assert await gate.remaining(1) == 1
    assert await gate.release(1, "u", "k2", 1) == 2
    assert await gate.release(1, "u", "k2", 1) == 2  # a second release changes nothing
    assert await gate.release(1, "u", "k1", 1) == 2  # a confirmed order is not released
    assert (await gate.reserve(1, "v", "k", 2, "f")).outcome == "ok"
    assert await gate.remaining(1) == 0
    assert await gate.remaining(2) is None


async def test_not_live_and_rebuilt_limits(gate: Gate) -> None:
    await gate.load(_state(5, stock=10, live=False))
    assert (await gate.reserve(5, "u", "k", 1, "f")).outcome == "not_live"
    await gate.load(_state(6, stock=10, limit=2, bought={"u": 2}))
    assert (await gate.reserve(6, "u", "k", 1, "f")).outcome == "limit"
    await gate.sold_out(6)
    assert (await gate.reserve(6, "w", "k", 1, "f")).outcome == "sold_out"
    await gate.sold_out(7)  # unknown sale: nothing to do
    assert (await gate.reserve(7, "w", "k", 1, "f")).outcome == "unknown"


async def test_exactly_stock_pass_under_concurrency(gate: Gate) -> None:
    await gate.load(_state(9, stock=100, limit=1))
    attempts = [(f"user{i % 2000}", f"key{i}") for i in range(5000)]
    answers = await asyncio.gather(*(gate.reserve(9, u, k, 1, "f") for u, k in attempts))
    winners = [a for a, ans in zip(attempts, answers, strict=True) if ans.outcome == "ok"]
    assert len(winners) == 100
    assert len({user for user, _ in winners}) == 100  # nobody above the limit of 1
    assert await gate.remaining(9) == 0
    assert {a.outcome for a in answers} <= {"ok", "sold_out", "limit"}


async def test_replace_rebuilds_from_the_database_view(gate: Gate) -> None:
    await gate.load(_state(3, stock=5))
    assert (await gate.reserve(3, "crashed", "k", 1, "f")).outcome == "ok"  # never committed
    assert await gate.load(_state(3, stock=5), replace=True)  # the database still says 5
    assert await gate.remaining(3) == 5
    assert (await gate.reserve(3, "crashed", "k", 1, "f")).outcome == "ok"


async def test_attempts_decided_together_are_decided_one_by_one(gate: Gate) -> None:
    await gate.load(_state(11, stock=3, limit=1))
    answers = await asyncio.gather(  # one loop turn: one script call on Redis
        gate.reserve(11, "a", "k1", 1, "f"),
        gate.reserve(11, "a", "k1", 1, "f"),  # the same key again: still pending
        gate.reserve(11, "a", "k2", 1, "f"),  # the same user again: over the limit
        gate.reserve(11, "b", "k", 1, "f"),
        gate.reserve(11, "c", "k", 1, "f"),
        gate.reserve(11, "d", "k", 1, "f"),
        gate.reserve(12, "a", "k1", 1, "f"),  # another sale, not loaded
    )
    assert [(a.outcome, a.remaining) for a in answers] == [
        ("ok", 2),
        ("in_flight", 2),
        ("limit", 2),
        ("ok", 1),
        ("ok", 0),
        ("sold_out", 0),
        ("unknown", 0),
    ]


async def test_an_attempt_abandoned_in_flight_gives_its_stock_back(gate: Gate) -> None:
    await gate.load(_state(13, stock=2))
    for i in range(64):
        attempt = asyncio.ensure_future(gate.reserve(13, f"gone{i}", "k", 1, "f"))
        for _ in range(i % 16):  # cancelled before it was sent, in flight, just after
            await asyncio.sleep(0)
        if attempt.done():  # answered already (always so in-process): the caller's to give
            await gate.release(13, f"gone{i}", "k", 1)
        attempt.cancel()
        await asyncio.gather(attempt, return_exceptions=True)
    for _ in range(500):  # given back by the script call's own task, a moment later
        if await gate.remaining(13) == 2:
            break
        await asyncio.sleep(0.01)
    assert await gate.remaining(13) == 2
    assert (await gate.reserve(13, "gone0", "k", 1, "f")).outcome == "ok"  # key not pending


@pytest.fixture
async def redis_gate() -> AsyncIterator[RedisGate]:
    async with _redis_gate() as made:
        yield made


async def test_a_call_whose_answer_was_lost_gives_back_only_what_it_reserved(
    redis_gate: RedisGate,
) -> None:
    gate = redis_gate
    await gate.load(_state(21, stock=5, limit=2))
    assert (await gate.reserve(21, "keeper", "k", 1, "f")).outcome == "ok"  # stays pending
    real = gate._reserve

    async def answer_lost(*args: object, **kwargs: object) -> object:
        await real(*args, **kwargs)  # Redis runs the call ...
        raise TimeoutError("Timeout reading from socket")  # ... and the reply never comes

    gate._reserve = answer_lost  # type: ignore[assignment]
    attempts = [gate.reserve(21, f"u{i}", "k", 1, "f") for i in range(3)]
    attempts.append(gate.reserve(21, "keeper", "k", 1, "f"))  # in flight elsewhere
    outcomes = await asyncio.gather(*attempts, return_exceptions=True)
    assert all(isinstance(o, TimeoutError) for o in outcomes), outcomes
    gate._reserve = real  # type: ignore[method-assign]
    for _ in range(500):
        if await gate.remaining(21) == 4:
            break
        await asyncio.sleep(0.01)
    assert await gate.remaining(21) == 4  # the three given back, the keeper's kept
    assert (await gate.reserve(21, "keeper", "k", 1, "f")).outcome == "in_flight"
    assert (await gate.reserve(21, "u0", "k", 1, "f")).outcome == "ok"  # u0's key is free


async def test_the_same_call_run_twice_reserves_once(redis_gate: RedisGate) -> None:
    """redis-py resends a command once on a new connection when the old one died; if
    Redis had run it, the second run must not turn the reservation into 'in_flight'."""
    gate = redis_gate
    await gate.load(_state(22, stock=5))
    args = ["call-1", "u1", "u1|k", 1, "f", "u2", "u2|k", 1, "f"]
    first = await gate._reserve(keys=gate._keys(22), args=args)
    again = await gate._reserve(keys=gate._keys(22), args=args)
    assert [first[0], first[3]] == [b"ok", b"ok"]
    assert [again[0], again[3]] == [b"ok", b"ok"]
    assert await gate.remaining(22) == 3
    other = await gate._reserve(keys=gate._keys(22), args=["call-2", "u1", "u1|k", 1, "f"])
    assert other[0] == b"in_flight"  # another call with the same key still waits
