"""Read replicas on real replication (MariaDB GTID, PostgreSQL streaming): reads go to the
replica, what it lacks to the primary, and a replica behind, stopped or killed is skipped
and comes back by itself."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from surge import db
from surge.backends import BackendOptions, Backends, open_backends
from surge.backends.sql_replicas import ReplicaSet, ReplicaUnwell
from tests.replication import Replication, replication

pytestmark = pytest.mark.anyio
MAX_LAG = 1.0


@pytest.fixture(scope="module", params=["mariadb", "postgresql"])
def replicated(request: pytest.FixtureRequest) -> Iterator[Replication]:
    with replication(request.param) as made:
        db.migrate(made.primary_url)
        asyncio.run(db.seed(made.primary_url, 50, users=5, reset=True))
        yield made


@contextlib.asynccontextmanager
async def _opened(replicated: Replication) -> AsyncIterator[tuple[Backends, ReplicaSet]]:
    options = BackendOptions(
        replicated.primary_url,
        replica_urls=(replicated.replica_url,),
        replica_max_lag=MAX_LAG,
        db_pool_size=2,
    )
    async with contextlib.AsyncExitStack() as stack:
        made = await open_backends(options, stack)
        assert made.replicas is not None
        await _until(lambda: made.replicas.usable() is not None)  # type: ignore[union-attr]
        yield made, made.replicas


async def _until(done: object, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:  # type: ignore[operator]  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def _new_order(replicated: Replication) -> int:
    """One more order, on the primary; its id."""
    result = await db.seed(replicated.primary_url, 1, users=5)
    return result.first_order_id


async def test_reads_on_the_replica_and_what_it_lacks_on_the_primary(
    replicated: Replication,
) -> None:
    async with _opened(replicated) as (made, replicas):
        (replica,) = replicas.replicas
        found = await made.store.get_orders([1, 2, 50])
        assert sorted(found) == [1, 2, 50]
        assert replica.reads == 1 and replicas.fallbacks == {}

        replicated.pause()  # the replica stops applying changes: what is bought now...
        try:
            new = await _new_order(replicated)
            owner = (await made.store.get_orders([new]))[new].user_id  # ...the primary has
            assert replicas.fallbacks == {"not-on-replica": 1}
            assert (await made.store.get_orders([10**9])) == {}  # "no such order": primary's
            assert replicas.fallbacks == {"not-on-replica": 2}
            # a buyer's first page, where the purchase shows, is the primary's
            first = await made.sales.user_orders(owner, None, 3)
            assert first[0].id == new
            reads = replica.reads
            later = await made.sales.user_orders(owner, first[-1].id, 3)  # a later page
            assert replica.reads == reads + 1 and all(o.id < first[-1].id for o in later)
        finally:
            replicated.resume()


async def test_a_replica_behind_or_stopped_is_skipped_and_readiness_says_so(
    replicated: Replication,
) -> None:
    async with _opened(replicated) as (made, replicas):
        await replicas.check()  # well: readiness ok
        replicated.pause()
        try:
            # MariaDB: a stopped replica does not replicate (down); PostgreSQL: replay paused
            # while the primary writes, the replica falls behind past MAX_LAG
            for _ in range(3):
                await _new_order(replicated)
                await asyncio.sleep(0.6)
            await _until(lambda: replicas.usable() is None)
            assert replicas.usable() is None
            with pytest.raises(ReplicaUnwell):
                await replicas.check()
            found = await made.store.get_orders([1, 2])
            assert sorted(found) == [1, 2] and replicas.fallbacks.get("no-replica", 0) >= 1
        finally:
            replicated.resume()
        await _until(lambda: replicas.usable() is not None)
        await replicas.check()  # back by itself


async def test_a_replica_cut_off_from_its_primary_is_not_used(replicated: Replication) -> None:
    """Its positions look caught up (it applied all it received), but it no longer
    receives: PostgreSQL's replay and receive positions agree, MariaDB's SQL thread runs."""
    async with _opened(replicated) as (_, replicas):
        replicated.cut()
        try:
            await _new_order(replicated)
            await _until(lambda: replicas.usable() is None)
            assert replicas.usable() is None
            with pytest.raises(ReplicaUnwell):
                await replicas.check()
        finally:
            replicated.mend()
        await _until(lambda: replicas.usable() is not None, 30)
        await replicas.check()


async def test_a_replica_killed_costs_no_read_and_comes_back(replicated: Replication) -> None:
    async with _opened(replicated) as (made, replicas):
        (replica,) = replicas.replicas
        replicated.kill_replica()
        try:
            for _ in range(5):  # at once and on: the primary answers
                assert sorted(await made.store.get_orders([1, 2])) == [1, 2]
            assert replicas.fallbacks.keys() & {"replica-failed", "no-replica"}
            await _until(lambda: replica.lag < 0)
            with pytest.raises(ReplicaUnwell):
                await replicas.check()
        finally:
            replicated.start_replica()
        await _until(lambda: replicas.usable() is not None, 30)
        reads = replica.reads
        assert sorted(await made.store.get_orders([1, 2])) == [1, 2]
        assert replica.reads == reads + 1


async def test_an_order_written_lately_is_read_on_the_primary(replicated: Replication) -> None:
    """Orders change after their purchase (paid, cancelled, expired: issue 19): for a
    moment after a write the replica may still have the old state, so those ids are the
    primary's for max_lag + 1 s; other ids stay on the replica."""
    import sqlalchemy as sa

    from surge.backends.sql import create_engine
    from surge.schema import orders

    async with _opened(replicated) as (made, replicas):
        (replica,) = replicas.replicas
        ids = [3, 4]
        before = await made.store.get_orders(ids)
        engine = create_engine(replicated.primary_url, pool_size=1)
        replicated.pause()
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    sa.update(orders).where(orders.c.id.in_(ids)).values(status="lately")
                )
            made.store.changed([3])  # what the order query does for a transition
            reads = replica.reads
            after = await made.store.get_orders(ids)
            assert after[3].status == "lately"  # the primary's
            assert after[4].status == before[4].status  # the paused replica's, stale
            assert replicas.fallbacks.get("recently-written") == 1
            assert replica.reads == reads + 1
        finally:
            replicated.resume()
            await engine.dispose()
