"""The stock gate's contract, in-process and in Redis: the same outcomes, and exactly S."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from surge.backends.memory_gate import MemoryGate
from surge.backends.redis import connect
from surge.backends.redis_gate import RedisGate
from surge.ground.interfaces import Gate
from surge.ground.purchases import Answer, Confirmed, GateState, StoredOrder
from tests.backends import REDIS_KINDS, shared_redis_url

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def _redis_gate(kind: str = "redis") -> AsyncIterator[RedisGate]:
    client = connect(shared_redis_url(kind), pool_size=64)
    prefix = f"surge-test-{uuid.uuid4().hex[:12]}:"
    try:
        yield RedisGate(client, prefix)
    finally:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture(params=["memory", *REDIS_KINDS])
async def gate(request: pytest.FixtureRequest) -> AsyncIterator[Gate]:
    if request.param == "memory":
        yield MemoryGate()
        return
    async with _redis_gate(request.param) as made:
        yield made


STALE_MS = 60_000


def _state(
    sale_id: int,
    stock: int,
    limit: int = 1,
    live: bool = True,
    orders: tuple[StoredOrder, ...] = (),
    ended: bool = False,
) -> GateState:
    now = int(time.time() * 1000)
    starts = now - 60_000 if live or ended else now + 60_000
    ends = now - 1_000 if ended else starts + 3_600_000
    return GateState(sale_id, stock, limit, starts, ends, orders)


async def _load(gate: Gate, state: GateState) -> None:
    await gate.reconcile(state, STALE_MS)


async def test_outcomes(gate: Gate) -> None:
    assert (await gate.reserve(1, "u", "k", 1, "f")).outcome == "unknown"
    installed = await gate.reconcile(_state(1, stock=3, limit=2), STALE_MS)
    assert (installed.before, installed.after, installed.dropped) == (None, 3, 0)
    first = await gate.reserve(1, "u", "k1", 1, "f1")
    assert (first.outcome, first.remaining) == ("ok", 2)
    assert (await gate.reserve(1, "u", "k1", 1, "f1")).outcome == "in_flight"
    assert (await gate.reserve(1, "u", "k1", 2, "other")).outcome == "mismatch"
    await gate.confirm(1, [Confirmed("u", "k1", "f1", 41, 1)])
    done = await gate.reserve(1, "u", "k1", 1, "f1")
    assert (done.outcome, done.order_id) == ("done", 41)
    assert (await gate.reserve(1, "u", "k2", 2, "f2")).outcome == "limit"
    assert (await gate.reserve(1, "u", "k2", 1, "f2")).outcome == "ok"
    assert (await gate.reserve(1, "v", "k", 2, "f")).outcome == "sold_out"
    assert await gate.remaining(1) == 1
    assert await gate.keys(1) == {"u|k1", "u|k2"}
    assert await gate.keys(2) is None
    assert await gate.release(1, "u", "k2", 1) == 2
    assert await gate.release(1, "u", "k2", 1) == 2  # a second release changes nothing
    assert await gate.release(1, "u", "k1", 1) == 2  # a confirmed order is not released
    assert (await gate.reserve(1, "v", "k", 2, "f")).outcome == "ok"
    assert await gate.remaining(1) == 0
    assert await gate.remaining(2) is None


async def test_not_live_and_rebuilt_limits(gate: Gate) -> None:
    await _load(gate, _state(5, stock=10, live=False))
    assert (await gate.reserve(5, "u", "k", 1, "f")).outcome == "not_live"
    bought = (StoredOrder("u", "old", 7, 2, "f"),)
    await _load(gate, _state(6, stock=10, limit=2, orders=bought))
    assert (await gate.reserve(6, "u", "k", 1, "f")).outcome == "limit"
    await gate.sold_out(6)
    assert (await gate.reserve(6, "w", "k", 1, "f")).outcome == "sold_out"
    await gate.sold_out(7)  # unknown sale: nothing to do
    assert (await gate.reserve(7, "w", "k", 1, "f")).outcome == "unknown"


async def test_a_known_key_replays_after_the_sale_ended(gate: Gate) -> None:
    orders = (StoredOrder("u", "k", 70, 1, "f"),)
    await _load(gate, _state(8, stock=9, orders=orders, ended=True))
    assert (await gate.reserve(8, "u", "k", 1, "f")) == Answer("done", 9, order_id=70)
    assert (await gate.reserve(8, "u", "k2", 1, "f")).outcome == "not_live"
    assert (await gate.reserve(8, "v", "k", 1, "f")).outcome == "not_live"


async def test_exactly_stock_pass_under_concurrency(gate: Gate) -> None:
    await _load(gate, _state(9, stock=100, limit=1))
    attempts = [(f"user{i % 2000}", f"key{i}") for i in range(5000)]
    answers = await asyncio.gather(*(gate.reserve(9, u, k, 1, "f") for u, k in attempts))
    winners = [a for a, ans in zip(attempts, answers, strict=True) if ans.outcome == "ok"]
    assert len(winners) == 100
    assert len({user for user, _ in winners}) == 100  # nobody above the limit of 1
    assert await gate.remaining(9) == 0
    assert {a.outcome for a in answers} <= {"ok", "sold_out", "limit"}


async def test_reconcile_gives_back_only_stale_reservations(gate: Gate) -> None:
    await _load(gate, _state(3, stock=5))
    assert (await gate.reserve(3, "crashed", "k", 1, "f")).outcome == "ok"  # never committed
    kept = await gate.reconcile(_state(3, stock=5), STALE_MS)  # the database still says 5
    assert (kept.before, kept.after, kept.dropped) == (4, 4, 0)  # still in flight, maybe
    assert (await gate.reserve(3, "crashed", "k", 1, "f")).outcome == "in_flight"
    await asyncio.sleep(0.05)
    dropped = await gate.reconcile(_state(3, stock=5), stale_ms=10)
    assert (dropped.before, dropped.after, dropped.dropped) == (4, 5, 1)
    # its stock is back, but the key stays uncertain: its commit may still land, so a
    # retry of it must ask the database, and the board must let it through
    assert (await gate.reserve(3, "crashed", "k", 1, "f")).outcome == "uncertain"
    assert await gate.keys(3) == {"crashed|k"}
    assert await gate.release(3, "crashed", "k", 1) == 5  # nothing to give back twice
    again = await gate.reconcile(_state(3, stock=5), stale_ms=10)
    assert (again.after, again.dropped) == (5, 0)
    # the late commit lands: the next snapshot has it, and the key replays it
    late = _state(3, stock=4, orders=(StoredOrder("crashed", "k", 33, 1, "f"),))
    assert (await gate.reconcile(late, stale_ms=10)).after == 4
    assert await gate.reserve(3, "crashed", "k", 1, "f") == Answer("done", 4, order_id=33)


async def test_reconcile_counts_a_commit_that_lands_after_the_snapshot(gate: Gate) -> None:
    """Issue 13 bug 2: a rebuild read the database, a commit landed, the rebuild wrote
    what it had read; the gate then counted the commit's stock as still there."""
    await _load(gate, _state(4, stock=10))
    assert (await gate.reserve(4, "a", "ka", 1, "fa")).outcome == "ok"
    assert (await gate.reserve(4, "b", "kb", 1, "fb")).outcome == "ok"
    snapshot = _state(4, stock=10)  # read while both were still being committed
    await gate.confirm(4, [Confirmed("a", "ka", "fa", 1, 1)])  # a commits, then learned
    done = await gate.reconcile(snapshot, STALE_MS)  # b still pending
    assert (done.before, done.after) == (8, 8)
    assert await gate.keys(4) == {"a|ka", "b|kb"}
    # the next snapshot has a's order: counted once, not twice
    later = _state(4, stock=9, orders=(StoredOrder("a", "ka", 1, 1, "fa"),))
    assert (await gate.reconcile(later, STALE_MS)).after == 8


async def test_reconcile_restores_the_keys_of_stored_orders(gate: Gate) -> None:
    """Issue 13 bugs 1 and 3: after Redis lost everything, or when the bookkeeping after
    a commit never reached the gate, a stored order's key must replay it."""
    await _load(gate, _state(14, stock=5, limit=2))
    assert (await gate.reserve(14, "u", "stuck", 1, "f1")).outcome == "ok"  # committed, but
    stored = (StoredOrder("u", "stuck", 90, 1, "f1"), StoredOrder("v", "lost", 91, 2, "f2"))
    done = await gate.reconcile(_state(14, stock=2, limit=2, orders=stored), STALE_MS)
    assert done.after == 2
    assert await gate.reserve(14, "u", "stuck", 1, "f1") == Answer("done", 2, order_id=90)
    assert await gate.reserve(14, "v", "lost", 2, "f2") == Answer("done", 2, order_id=91)
    assert (await gate.reserve(14, "v", "new", 1, "f3")).outcome == "limit"
    assert (await gate.reserve(14, "u", "new", 1, "f3")).outcome == "ok"
    assert await gate.remaining(14) == 1


async def test_claim(gate: Gate) -> None:
    first = await gate.claim(15, 5.0)
    second = await gate.claim(15, 5.0)
    assert first
    if isinstance(gate, RedisGate):  # one claimant per period among processes
        assert not second


async def test_attempts_decided_together_are_decided_one_by_one(gate: Gate) -> None:
    await _load(gate, _state(11, stock=3, limit=1))
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
    await _load(gate, _state(13, stock=2))
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
    await _load(gate, _state(21, stock=5, limit=2))
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


async def test_an_abandoned_reservation_is_given_back_through_a_failing_release(
    redis_gate: RedisGate,
) -> None:
    """A caller gave up while its reservation was being made, and the release that gives
    it back fails once (a timeout under load): it is retried, not left for the
    reconciliation (seen in CI on the Redis Cluster, the machine loaded)."""
    gate = redis_gate
    await _load(gate, _state(23, stock=1))
    real, failures = gate._release, [1]

    async def flaky(*args: object, **kwargs: object) -> object:
        if failures:
            failures.pop()
            raise TimeoutError("Timeout reading from socket")
        return await real(*args, **kwargs)

    gate._release = flaky  # type: ignore[assignment]
    attempt = asyncio.ensure_future(gate.reserve(23, "gone", "k", 1, "f"))
    for _ in range(3):  # sent, and cancelled while Redis decides
        await asyncio.sleep(0)
    attempt.cancel()
    await asyncio.gather(attempt, return_exceptions=True)
    for _ in range(500):
        if await gate.remaining(23) == 1 and not failures:
            break
        await asyncio.sleep(0.01)
    gate._release = real  # type: ignore[method-assign]
    assert not failures  # the release was tried, failed, and ...
    assert await gate.remaining(23) == 1  # ... retried: the stock is back


async def test_the_same_call_run_twice_reserves_once(redis_gate: RedisGate) -> None:
    """redis-py resends a command once on a new connection when the old one died; if
    Redis had run it, the second run must not turn the reservation into 'in_flight'."""
    gate = redis_gate
    await _load(gate, _state(22, stock=5))
    args = ["call-1", "u1", "u1|k", 1, "f", "u2", "u2|k", 1, "f"]
    first = await gate._reserve(keys=gate._keys(22), args=args)
    again = await gate._reserve(keys=gate._keys(22), args=args)
    assert [first[0], first[3]] == [b"ok", b"ok"]
    assert [again[0], again[3]] == [b"ok", b"ok"]
    assert await gate.remaining(22) == 3
    other = await gate._reserve(keys=gate._keys(22), args=["call-2", "u1", "u1|k", 1, "f"])
    assert other[0] == b"in_flight"  # another call with the same key still waits


async def test_an_uncertain_key(gate: Gate) -> None:
    """A commit that may have landed unheard: stock back, key kept; a retry asks the
    database ("uncertain"); if it has nothing, `retake` lets the key buy afresh, and a
    refusal leaves it uncertain (the first commit may still land)."""
    await _load(gate, _state(16, stock=1))
    assert (await gate.reserve(16, "u", "k", 1, "f")).outcome == "ok"
    assert await gate.release(16, "u", "k", 1, True, "f") == 1
    assert (await gate.reserve(16, "u", "k", 1, "f")).outcome == "uncertain"
    assert (await gate.reserve(16, "u", "k", 2, "other")).outcome == "mismatch"
    assert await gate.keys(16) == {"u|k"}  # the sold-out board lets it through
    assert await gate.release(16, "u", "k", 1) == 1  # nothing more to give back
    assert (await gate.reserve(16, "v", "k", 1, "f")).outcome == "ok"  # takes the last
    refused = await gate.retake(16, "u", "k", 1, "f")
    assert refused.outcome == "sold_out" and 0 <= refused.uncertain_ms < 60_000
    assert (await gate.reserve(16, "u", "k", 1, "f")).outcome == "uncertain"  # still
    assert (await gate.retake(16, "u", "k", 2, "other")).outcome == "mismatch"
    await gate.release(16, "v", "k", 1)
    taken = await gate.retake(16, "u", "k", 1, "f")
    assert (taken.outcome, taken.remaining) == ("ok", 0)
    assert (await gate.reserve(16, "u", "k", 1, "f")).outcome == "in_flight"  # pending now
    assert (await gate.retake(16, "u", "k", 1, "f")).outcome == "again"
    assert (await gate.retake(99, "u", "k", 1, "f")).outcome == "again"  # no such gate


async def test_bookkeeping_for_a_gate_that_is_gone_leaves_nothing(gate: Gate) -> None:
    await gate.confirm(17, [Confirmed("u", "k", "f", 5, 1)])  # the gate expired, or lost
    assert await gate.keys(17) is None
    assert (await gate.reserve(17, "u", "k", 1, "f")).outcome == "unknown"
    if isinstance(gate, RedisGate):  # and no hash left behind without an expiry
        assert await gate._client.exists(gate._keys(17)[2]) == 0


async def test_entries_of_the_previous_format(redis_gate: RedisGate) -> None:
    """Written before quantities and times were kept: a pending one becomes uncertain (its
    commit may land), not forgotten; a done one is rewritten from the snapshot."""
    gate = redis_gate
    await _load(gate, _state(23, stock=5))
    keys = gate._keys(23)[2]
    await gate._client.hset(keys, mapping={"old|k": "p|f|call-1", "done|k": "d|f|9"})
    snapshot = _state(23, stock=4, orders=(StoredOrder("done", "k", 9, 1, "f"),))
    done = await gate.reconcile(snapshot, STALE_MS)
    assert (done.after, done.dropped) == (4, 1)
    assert (await gate.reserve(23, "old", "k", 1, "f")).outcome == "uncertain"
    assert await gate.reserve(23, "done", "k", 1, "f") == Answer("done", 4, order_id=9)
