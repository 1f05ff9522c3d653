"""One contract for every backend kind: sqlite+memory, MariaDB+Redis, PostgreSQL+Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from surge import db
from surge.backends import BackendOptions, Backends, open_backends
from tests.backends import Backend

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def _opened(backend: Backend) -> AsyncIterator[Backends]:
    options = BackendOptions(
        database_url=backend.database_url,
        redis_url=backend.redis_url,
        prefix=backend.prefix,
        db_pool_size=4,
    )
    async with contextlib.AsyncExitStack() as stack:
        yield await open_backends(options, stack)


async def test_cache_get_set_delete_and_ttl(backend: Backend) -> None:
    async with _opened(backend) as opened:
        cache = opened.cache
        assert await cache.get_many(["a", "b"]) == [None, None]
        await cache.set("a", b"1", ttl=30)
        cache.set_soon("b", b"", ttl=30)  # empty values are values (negative cache entries)
        cache.set_soon("short", b"x", ttl=0.05)
        await asyncio.sleep(0.02)
        assert await cache.get_many(["a", "b", "c"]) == [b"1", b"", None]
        await asyncio.sleep(0.1)
        assert await cache.get_many(["short"]) == [None]
        await cache.delete("a")
        assert await cache.get_many(["a"]) == [None]
        assert await cache.get_many([]) == []
        await cache.ping()


async def test_background_fills_over_many_loop_turns_all_land(backend: Backend) -> None:
    """Fills made while one is being written wait for the next; none is lost, and more
    than one pipeline's worth (1,000 keys) arrives in order of setting."""
    async with _opened(backend) as opened:
        cache = opened.cache
        keys = [f"fill:{n}" for n in range(2_500)]
        for start in range(0, len(keys), 250):  # ten event-loop turns of fills
            for key in keys[start : start + 250]:
                cache.set_soon(key, key.encode(), ttl=30)
            await asyncio.sleep(0)
        for _ in range(200):
            values = await cache.get_many(keys)
            if None not in values:
                break
            await asyncio.sleep(0.01)
        assert values == [key.encode() for key in keys]


async def test_a_delete_also_cancels_a_fill_still_waiting(backend: Backend) -> None:
    """An order bought after a lookup found nothing: the lookup's fill (not-found) must not
    land after the purchase's delete and hide the new order."""
    async with _opened(backend) as opened:
        cache = opened.cache
        cache.set_soon("order:new", b"", ttl=30)
        await cache.delete("order:new")
        await asyncio.sleep(0.05)
        assert await cache.get_many(["order:new"]) == [None]


async def test_cache_keys_are_prefixed_apart(backend: Backend) -> None:
    other = Backend(backend.kind, backend.database_url, backend.redis_url, backend.prefix + "x:")
    async with _opened(backend) as first, _opened(other) as second:
        await first.cache.set("k", b"first", ttl=30)
        assert await second.cache.get_many(["k"]) == [None]


async def test_bus_delivers_to_every_subscriber(backend: Backend) -> None:
    async with _opened(backend) as first, _opened(backend) as second:
        got: list[tuple[str, bytes]] = []
        await first.bus.subscribe("news", lambda m: got.append(("first", m)))
        await second.bus.subscribe("news", lambda m: got.append(("second", m)))
        await first.bus.subscribe("other", lambda m: got.append(("other", m)))
        publisher = first.bus
        await publisher.publish("news", b"hello")
        for _ in range(100):
            if len(got) >= (2 if backend.redis_url else 1):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        if backend.redis_url:  # across processes: both subscribers, once each
            assert sorted(got) == [("first", b"hello"), ("second", b"hello")]
        else:  # in-process: buses are per process
            assert got == [("first", b"hello")]


async def test_store_reads_seeded_orders(backend: Backend) -> None:
    await asyncio.to_thread(db.migrate, backend.database_url)
    await asyncio.to_thread(db.migrate, backend.database_url)  # idempotent
    assert await db.current_revision(backend.database_url) == db.head_revision(backend.database_url)
    result = await db.seed(backend.database_url, 250, users=10, reset=True)
    assert result.first_order_id == 1
    async with _opened(backend) as opened:
        found = await opened.store.get_orders([1, 2, 250, 251, 10**12])
        assert sorted(found) == [1, 2, 250]
        assert found[2].user_id == db.owner_of(2, 10) == "user2"
        assert found[1].created_at.tzinfo is not None
        assert found[1].quantity in (1, 2, 3)
        await opened.store.ping()
        assert opened.store.in_use == 0
    again = await db.seed(backend.database_url, 10, users=10)
    assert again.first_order_id == 251  # seeding appends after the existing ids
