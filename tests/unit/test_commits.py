"""Group commit: winners arriving while a batch commits form the next batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from surge.backends.memory_gate import MemoryGate
from surge.ground.purchases import Confirmed, GateState, Purchase, Win
from surge.ground.sales import NewSale, Sale
from surge.sales.commits import AfterCommit, CommitBatcher
from tests.fakes import MemorySales

pytestmark = pytest.mark.anyio


async def _store(stock: int = 100) -> tuple[MemorySales, Sale]:
    store = MemorySales()
    now = datetime.now(UTC)
    sale = await store.create_sale(
        NewSale("s", stock, 1, now - timedelta(minutes=1), now + timedelta(hours=1)), now
    )
    return store, sale


async def test_winners_wait_for_the_batch_in_front_and_go_together() -> None:
    store, sale = await _store()
    store.fail_next(ValueError("boom"), user="u7")
    stall = store.stall_next()  # the first commit takes a while
    batcher = CommitBatcher(store)
    first = [batcher.submit(sale, Win(f"u{i}", 1, "k", "h")).waiter for i in range(3)]
    await asyncio.sleep(0.01)  # the first batch is committing now
    later = [batcher.submit(sale, Win(f"u{i}", 1, "k", "h")).waiter for i in range(3, 10)]
    stall.set()
    results = await asyncio.gather(*first, *later, return_exceptions=True)
    assert [[w.user_id for w in batch] for batch in store.batches] == [
        ["u0", "u1", "u2"],
        [f"u{i}" for i in range(3, 10)],
    ]
    assert isinstance(results[7], ValueError)  # u7's own failure, nobody else's
    committed = [r for r in results if isinstance(r, Purchase) and r.outcome == "committed"]
    assert len(committed) == 9
    assert len(await store.sale_orders(sale.id)) == 9


async def test_a_request_that_gave_up_can_still_learn_the_outcome() -> None:
    store, sale = await _store()
    store.fail_next(ValueError("boom"), user="bad")
    stall = store.stall_next()
    batcher = CommitBatcher(store)
    good = batcher.submit(sale, Win("good", 1, "k", "h"))
    bad = batcher.submit(sale, Win("bad", 1, "k", "h"))
    await asyncio.sleep(0.01)
    good.waiter.cancel()  # its request hit the deadline during the commit
    stall.set()
    assert (await asyncio.wait_for(asyncio.shield(good.outcome), 1.0)).outcome == "committed"
    with pytest.raises(ValueError):
        await bad.waiter
    assert isinstance(bad.outcome.exception(), ValueError)


async def test_an_idle_winner_commits_at_once_alone() -> None:
    store, sale = await _store()
    done = await CommitBatcher(store).submit(sale, Win("solo", 1, "k", "h")).waiter
    assert done.outcome == "committed" and done.order is not None
    assert [[w.user_id for w in batch] for batch in store.batches] == [["solo"]]


FAR = 2**42  # ms: a sale that never ends


class Books(MemoryGate):
    """The in-process gate, recording each `confirm` (and failing the first `failures`)."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.confirmed: list[tuple[int, list[int]]] = []
        self.forgotten: list[tuple[int, ...]] = []
        self.failures = failures  # confirms that fail before one succeeds

    async def confirm(self, sale_id: int, orders: Sequence[Confirmed]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("redis down")
        self.confirmed.append((sale_id, [o.order_id for o in orders]))
        await super().confirm(sale_id, orders)

    async def invalidate(self, *order_ids: int) -> None:
        self.forgotten.append(order_ids)


async def test_bookkeeping_of_one_loop_turn_goes_out_together() -> None:
    books = Books()
    await books.reconcile(GateState(1, 10, 1, 0, FAR), 60_000)
    after = AfterCommit(books, books.invalidate)
    for sale_id, order_id in ((1, 10), (2, 20), (1, 11)):
        after.committed(sale_id, Confirmed(f"u{order_id}", "k", "f", order_id, 1))
    await asyncio.sleep(0.01)
    after.committed(1, Confirmed("late", "k", "f", 12, 1))  # a later turn: its own round
    await asyncio.sleep(0.01)
    assert books.confirmed == [(1, [10, 11]), (2, [20]), (1, [12])]
    assert books.forgotten == [(10, 20, 11), (12,)]
    learned = await books.reserve(1, "u11", "k", 1, "f")  # the key replays its order now
    assert (learned.outcome, learned.order_id) == ("done", 11)


async def test_bookkeeping_failing_in_part_still_does_the_rest_and_retries() -> None:
    """Issue 13 bug 3: Redis down right after a commit left the key pending for good."""
    books = Books(failures=2)
    after = AfterCommit(books, books.invalidate)
    after.committed(1, Confirmed("u", "k", "f", 7, 1))
    await asyncio.sleep(0.01)
    assert books.forgotten == [(7,)]
    assert books.confirmed == []
    await asyncio.sleep(0.5)  # retried after 0.1 s, then 0.2 s
    assert books.confirmed == [(1, [7])]


async def test_bookkeeping_gives_up_after_its_window() -> None:
    books = Books(failures=1000)
    after = AfterCommit(books, books.invalidate)
    after.RETRY_FOR = 0.3
    after.committed(1, Confirmed("u", "k", "f", 7, 1))
    await asyncio.sleep(0.6)
    assert not after._tasks  # nothing left running: the reconciliation repairs the gate
    assert books.confirmed == []
