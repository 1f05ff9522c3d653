"""Backends chosen by URL scheme, in this one factory; drivers are imported lazily."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from surge.backends.sql_sales import SqlSales
from surge.config import Settings
from surge.ground.interfaces import Bus, Cache, Gate, Store

log = logging.getLogger("surge.backends")


@dataclass(slots=True)
class Backends:
    cache: Cache
    bus: Bus
    store: Store
    sales: SqlSales
    gate: Gate
    redis: bool  # the shared layers are Redis (False: in-process)
    warm_redis: Callable[[], Awaitable[None]] | None = None
    redis_client: Any = None  # redis.asyncio.Redis when the shared layers are Redis

    async def warm(self) -> None:
        """Opens the connection pools before traffic comes (best effort: a dependency that
        is down now is reported by readiness, and connected to on first use)."""
        steps: list[Awaitable[None]] = [self.store.warm()]
        if self.warm_redis is not None:
            steps.append(self.warm_redis())
        for outcome in await asyncio.gather(*steps, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.warning("could not open the connection pools ahead of time: %s", outcome)


async def open_backends(
    settings: Settings,
    stack: contextlib.AsyncExitStack,
    on_cache_error: Callable[[Exception], None] | None = None,
) -> Backends:
    """Opens cache, bus and store; `stack` closes them in reverse order."""
    from surge.backends.sql import SqlStore, create_engine

    store = SqlStore(
        create_engine(settings.database_url, settings.db_pool_size), settings.db_pool_size
    )
    stack.push_async_callback(store.close)
    sales = SqlSales(store.engine)

    if settings.redis_url is None:
        from surge.backends.memory import MemoryBus, MemoryCache
        from surge.backends.memory_gate import MemoryGate

        cache: Cache = MemoryCache(max_entries=max(settings.near_cache_size * 4, 100_000))
        bus: Bus = MemoryBus()
        stack.push_async_callback(cache.close)
        stack.push_async_callback(bus.close)
        return Backends(cache, bus, store, sales, MemoryGate(), redis=False)

    from surge.backends.redis import RedisBus, RedisCache, connect, warm
    from surge.backends.redis_gate import RedisGate

    client = connect(settings.redis_url, settings.redis_pool_size)
    stack.push_async_callback(client.aclose)
    redis_cache = RedisCache(client, settings.redis_prefix, on_cache_error)
    redis_bus = RedisBus(client, settings.redis_prefix)
    stack.push_async_callback(redis_cache.close)
    stack.push_async_callback(redis_bus.close)
    gate = RedisGate(client, settings.redis_prefix)
    return Backends(
        redis_cache,
        redis_bus,
        store,
        sales,
        gate,
        redis=True,
        warm_redis=lambda: warm(client, settings.redis_pool_size),
        redis_client=client,
    )
