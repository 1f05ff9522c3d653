"""Group commit: winners arriving while a batch commits form the next batch."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from surge.commits import AfterCommit, CommitBatcher
from surge.ground.purchases import Confirmed, Purchase, Win
from surge.ground.sales import Sale

pytestmark = pytest.mark.anyio
NOW = datetime.now(UTC)
SALE = Sale(1, "s", 100, 100, 1, NOW - timedelta(minutes=1), NOW + timedelta(hours=1))


class Recorder:
    def __init__(self, fail_user: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.fail_user = fail_user

    async def purchase_many(
        self, sale: Sale, wins: list[Win], now: datetime
    ) -> list[Purchase | Exception]:
        self.batches.append([w.user_id for w in wins])
        await asyncio.sleep(0.05)  # the commit takes a while
        return [
            ValueError("boom") if w.user_id == self.fail_user else Purchase("committed")
            for w in wins
        ]


async def test_winners_wait_for_the_batch_in_front_and_go_together() -> None:
    store = Recorder(fail_user="u7")
    batcher = CommitBatcher(store)  # type: ignore[arg-type]
    first = [batcher.submit(SALE, Win(f"u{i}", 1, "k", "h")).waiter for i in range(3)]
    await asyncio.sleep(0.01)  # the first batch is committing now
    later = [batcher.submit(SALE, Win(f"u{i}", 1, "k", "h")).waiter for i in range(3, 10)]
    results = await asyncio.gather(*first, *later, return_exceptions=True)
    assert store.batches == [["u0", "u1", "u2"], [f"u{i}" for i in range(3, 10)]]
    assert isinstance(results[7], ValueError)  # u7's own failure, nobody else's
    assert sum(isinstance(r, Purchase) for r in results) == 9


async def test_a_request_that_gave_up_can_still_learn_the_outcome() -> None:
    store = Recorder(fail_user="bad")
    batcher = CommitBatcher(store)  # type: ignore[arg-type]
    good = batcher.submit(SALE, Win("good", 1, "k", "h"))
    bad = batcher.submit(SALE, Win("bad", 1, "k", "h"))
    await asyncio.sleep(0.01)
    good.waiter.cancel()  # its request hit the deadline during the commit
    assert (await asyncio.wait_for(asyncio.shield(good.outcome), 1.0)).outcome == "committed"
    with pytest.raises(ValueError):
        await bad.waiter
    assert isinstance(bad.outcome.exception(), ValueError)


async def test_an_idle_winner_commits_at_once_alone() -> None:
    store = Recorder()
    batcher = CommitBatcher(store)  # type: ignore[arg-type]
    assert (await batcher.submit(SALE, Win("solo", 1, "k", "h")).waiter).outcome == "committed"
    assert store.batches == [["solo"]]


class Books:
    def __init__(self, failures: int = 0) -> None:
        self.confirmed: list[tuple[int, list[int]]] = []
        self.forgotten: list[tuple[int, ...]] = []
        self.failures = failures  # confirms that fail before one succeeds

    async def confirm(self, sale_id: int, orders: list[Confirmed]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("redis down")
        self.confirmed.append((sale_id, [o.order_id for o in orders]))

    async def invalidate(self, *order_ids: int) -> None:
        self.forgotten.append(order_ids)


async def test_bookkeeping_of_one_loop_turn_goes_out_together() -> None:
    books = Books()
    after = AfterCommit(books, books.invalidate)  # type: ignore[arg-type]
    for sale_id, order_id in ((1, 10), (2, 20), (1, 11)):
        after.committed(sale_id, Confirmed(f"u{order_id}", "k", "f", order_id, 1))
    await asyncio.sleep(0.01)
    after.committed(1, Confirmed("late", "k", "f", 12, 1))  # a later turn: its own round
    await asyncio.sleep(0.01)
    assert books.confirmed == [(1, [10, 11]), (2, [20]), (1, [12])]
    assert books.forgotten == [(10, 20, 11), (12,)]


async def test_bookkeeping_failing_in_part_still_does_the_rest_and_retries() -> None:
    """Issue 13 bug 3: Redis down right after a commit left the key pending for good."""
    books = Books(failures=2)
    after = AfterCommit(books, books.invalidate)  # type: ignore[arg-type]
    after.committed(1, Confirmed("u", "k", "f", 7, 1))
    await asyncio.sleep(0.01)
    assert books.forgotten == [(7,)]
    assert books.confirmed == []
    await asyncio.sleep(0.5)  # retried after 0.1 s, then 0.2 s
    assert books.confirmed == [(1, [7])]


async def test_bookkeeping_gives_up_after_its_window() -> None:
    books = Books(failures=1000)
    after = AfterCommit(books, books.invalidate)  # type: ignore[arg-type]
    after.RETRY_FOR = 0.3
    after.committed(1, Confirmed("u", "k", "f", 7, 1))
    await asyncio.sleep(0.6)
    assert not after._tasks  # nothing left running: the reconciliation repairs the gate
    assert books.confirmed == []
