"""Group commit: winners arriving while a batch commits form the next batch."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from surge.backends.sql_sales import Purchase, Win
from surge.commits import CommitBatcher
from surge.sales import Sale

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
    first = [batcher.submit(SALE, Win(f"u{i}", 1, "k", "h")) for i in range(3)]
    await asyncio.sleep(0.01)  # the first batch is committing now
    later = [batcher.submit(SALE, Win(f"u{i}", 1, "k", "h")) for i in range(3, 10)]
    results = await asyncio.gather(*first, *later, return_exceptions=True)
    assert store.batches == [["u0", "u1", "u2"], [f"u{i}" for i in range(3, 10)]]
    assert isinstance(results[7], ValueError)  # u7's own failure, nobody else's
    assert sum(isinstance(r, Purchase) for r in results) == 9


async def test_an_idle_winner_commits_at_once_alone() -> None:
    store = Recorder()
    batcher = CommitBatcher(store)  # type: ignore[arg-type]
    assert (await batcher.submit(SALE, Win("solo", 1, "k", "h"))).outcome == "committed"
    assert store.batches == [["solo"]]
