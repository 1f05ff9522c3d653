"""The gate's side of issue 19: a cancelled or expired order gives its units back, once,
in-process and in Redis; reconciliation counts a return that lands after its snapshot."""

from __future__ import annotations

import asyncio

import pytest

from surge.ground.interfaces import Gate
from surge.ground.purchases import Answer, Confirmed, StoredOrder
from tests.contract.test_gate import STALE_MS, _load, _state, gate

pytestmark = pytest.mark.anyio
__all__ = ["gate"]  # the fixture, every gate kind


async def test_a_returned_order_frees_its_units_and_its_buyers_limit(gate: Gate) -> None:
    await _load(gate, _state(1, stock=2, limit=1))
    assert (await gate.reserve(1, "u", "k", 1, "f")).outcome == "ok"
    await gate.confirm(1, [Confirmed("u", "k", "f", 7, 1)])
    assert (await gate.reserve(1, "u", "k2", 1, "f2")).outcome == "limit"
    order = StoredOrder("u", "k", 7, 1, "f", returned=True)
    assert await gate.give_back(1, order) == 2
    assert await gate.give_back(1, order) == 2  # once: a repeated call changes nothing
    assert await gate.reserve(1, "u", "k", 1, "f") == Answer("done", 2, order_id=7)  # replays
    assert (await gate.reserve(1, "u", "k2", 1, "f2")).outcome == "ok"  # the limit is free
    assert await gate.remaining(1) == 1


async def test_a_return_before_the_gate_learned_the_order_stays_a_return(gate: Gate) -> None:
    """An order cancelled in the milliseconds between its commit and the bookkeeping that
    tells the gate: the late `confirm` must not count its units again."""
    await _load(gate, _state(2, stock=1))
    assert (await gate.reserve(2, "u", "k", 1, "f")).outcome == "ok"
    assert await gate.give_back(2, StoredOrder("u", "k", 9, 1, "f", returned=True)) == 1
    await gate.confirm(2, [Confirmed("u", "k", "f", 9, 1)])
    assert await gate.remaining(2) == 1
    assert (await gate.reserve(2, "v", "k", 1, "f")).outcome == "ok"
    assert await gate.reserve(2, "u", "k", 1, "f") == Answer("done", 0, order_id=9)


async def test_keys_that_held_no_units_give_nothing_back(gate: Gate) -> None:
    assert await gate.give_back(3, StoredOrder("u", "k", 1, 1, "f", returned=True)) == -1
    await _load(gate, _state(3, stock=2))
    assert (await gate.reserve(3, "u", "k", 1, "f")).outcome == "ok"
    assert await gate.release(3, "u", "k", 1, uncertain=True) == 2  # uncertain: no stock
    assert await gate.give_back(3, StoredOrder("u", "k", 4, 1, "f", returned=True)) == 2
    assert await gate.give_back(3, StoredOrder("x", "unknown", 5, 1, "g", returned=True)) == 2
    assert await gate.reserve(3, "x", "unknown", 1, "g") == Answer("done", 2, order_id=5)


async def test_reconcile_counts_a_return_that_lands_after_the_snapshot(gate: Gate) -> None:
    await _load(gate, _state(4, stock=3))
    stored = StoredOrder("u", "k", 11, 2, "f")
    await _load(gate, _state(4, stock=1, limit=2, orders=(stored,)))
    snapshot = _state(4, stock=1, limit=2, orders=(stored,))  # read before the return
    returned = StoredOrder("u", "k", 11, 2, "f", returned=True)
    assert await gate.give_back(4, returned) == 3
    done = await gate.reconcile(snapshot, STALE_MS)
    assert (done.before, done.after) == (3, 3)
    assert (await gate.reserve(4, "u", "new", 2, "g")).outcome == "ok"  # limit freed too
    # a snapshot that has the return: the same count, and the key still replays
    later = _state(4, stock=3, limit=2, orders=(returned,))
    assert (await gate.reconcile(later, STALE_MS)).after == 1
    assert await gate.reserve(4, "u", "k", 2, "f") == Answer("done", 1, order_id=11)


async def test_a_gate_rebuilt_from_the_database_knows_returns(gate: Gate) -> None:
    returned = StoredOrder("u", "k", 21, 1, "f", returned=True)
    active = StoredOrder("v", "k", 22, 1, "f")
    await _load(gate, _state(5, stock=1, limit=1, orders=(returned, active)))
    assert await gate.reserve(5, "u", "k", 1, "f") == Answer("done", 1, order_id=21)
    assert (await gate.reserve(5, "v", "k2", 1, "f2")).outcome == "limit"
    assert (await gate.reserve(5, "u", "k2", 1, "f2")).outcome == "ok"  # u's unit came back


async def test_returned_units_are_sold_exactly_once_under_concurrency(gate: Gate) -> None:
    await _load(gate, _state(6, stock=3))
    for n in range(3):
        assert (await gate.reserve(6, f"u{n}", "k", 1, "f")).outcome == "ok"
    await gate.confirm(6, [Confirmed(f"u{n}", "k", "f", 100 + n, 1) for n in range(3)])

    async def buy(n: int) -> str:
        return (await gate.reserve(6, f"b{n}", "k", 1, "f")).outcome

    returns = [
        gate.give_back(6, StoredOrder(f"u{n}", "k", 100 + n, 1, "f", returned=True))
        for n in (0, 1, 0, 1)  # each return twice
    ]
    results = await asyncio.gather(*(buy(n) for n in range(20)), *returns)
    outcomes = [r for r in results if isinstance(r, str)]
    assert outcomes.count("ok") + (await gate.remaining(6) or 0) == 2
