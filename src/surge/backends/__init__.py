"""The one backend factory: every kind is built here, by URL scheme, and nowhere else.

Two URLs decide everything. The database URL gives the store, the sales and the outbox
(SQLite, MariaDB/MySQL, PostgreSQL: all through SQLAlchemy). The shared-state URL gives the
cache, the bus, the stock gate, the room backplane, the shared rate-limit buckets and the
event stream: Redis for `redis://` and `rediss://`, the same classes on a Redis Cluster
for `redis+cluster://` (pub/sub there on shard channels), and without one, the in-process
kinds plus an SQLite file for the stream. A new kind of server is one more entry in
`_SHARED`. Drivers are imported only when their scheme is asked for, so the
embedded default never loads redis-py.

The caller (surge.app, surge.worker_process, the tests) passes plain values
(`BackendOptions`), not the settings object: the backends know nothing of the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from surge.backends.breaker import Breaker
from surge.backends.memory_buckets import LocalBuckets
from surge.ground.buckets import Buckets
from surge.ground.interfaces import (
    Bus,
    Cache,
    Gate,
    MailSender,
    OrderStates,
    Outbox,
    Sales,
    Store,
    Stream,
)
from surge.ground.rooms import Backplane

if TYPE_CHECKING:
    from surge.backends.sql import SqlStore
    from surge.backends.sql_replicas import ReplicaSet

log = logging.getLogger("surge.backends")

ErrorHook = Callable[[Exception], None]


@dataclass(frozen=True, slots=True)
class BackendOptions:
    database_url: str
    redis_url: str | None = None  # None: in-process shared state (one process)
    prefix: str = "surge:"  # of every Redis key and channel
    db_pool_size: int = 10
    redis_pool_size: int = 32
    cache_entries: int = 100_000  # the in-process cache's bound
    history_bytes: int = 16 * 1024 * 1024  # room history, per process or per Redis
    data_dir: Path = Path("surge-data")  # the embedded event stream's file
    dedup_ttl: float = 7 * 86_400.0  # how long the stream remembers a handled event
    stream_pool_size: int = 40  # the stream's own Redis connections (blocking reads)
    replica_urls: tuple[str, ...] = ()  # the database's read replicas (sql_replicas)
    replica_max_lag: float = 5.0  # seconds behind the primary a replica may serve
    pay_window: float = 0.0  # seconds a new order has to be paid in (0: paid at purchase)


@dataclass(slots=True)
class Backends:
    """What one server process talks to. `shared_buckets` is None without Redis (the
    rate limits are then this process's `local_buckets`)."""

    store: Store
    sales: Sales
    cache: Cache
    bus: Bus
    gate: Gate
    backplane: Backplane
    local_buckets: LocalBuckets
    shared_buckets: Buckets | None
    order_states: OrderStates | None = None  # set by the factory (an order's life)
    breakers: dict[str, Breaker] = field(default_factory=dict)  # dependency -> breaker
    replicas: ReplicaSet | None = None  # the database's read replicas, if any
    probes: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)
    gauges: dict[str, Callable[[], float]] = field(default_factory=dict)  # pool use
    _warm: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def warm(self) -> None:
        """Opens the connection pools before traffic comes (best effort: a dependency that
        is down now is reported by readiness, and connected to on first use)."""
        steps = [self.store.warm(), *(warm() for warm in self._warm)]
        for outcome in await asyncio.gather(*steps, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.warning("could not open the connection pools ahead of time: %s", outcome)


def scheme_of(url: str | None) -> str:
    """ "memory" for no URL; else the URL's scheme without a driver (`mysql+asyncmy`)."""
    return "memory" if url is None else urlsplit(url).scheme.partition("+")[0]


async def open_backends(
    options: BackendOptions,
    stack: contextlib.AsyncExitStack,
    on_cache_error: ErrorHook | None = None,
) -> Backends:
    """Builds every kind a server process uses; `stack` closes them in reverse order."""
    from surge.backends.sql import breaker
    from surge.backends.sql_order_states import SqlOrderStates

    store = open_store(options, stack)
    opener = _SHARED.get(scheme_of(options.redis_url))
    if opener is None:
        raise ValueError(f"no backend for {scheme_of(options.redis_url)}:// URLs")
    made = opener(options, store, stack, on_cache_error)
    made.order_states = SqlOrderStates(store.engine)
    made.breakers["database"] = breaker(store.engine)
    made.probes["database"] = store.ping
    if options.replica_urls:
        _add_replicas(made, store, options, stack)
    made.gauges["db_pool_in_use"] = lambda: float(store.in_use)
    made.gauges["db_pool_size"] = lambda: float(store.size)
    return made


def _add_replicas(
    made: Backends, store: SqlStore, options: BackendOptions, stack: contextlib.AsyncExitStack
) -> None:
    """Order-query misses and later pages of a buyer's orders read on the replicas; each
    has its own breaker, and readiness says `degraded` while one is down or behind."""
    from surge.backends.sql_replicas import ReplicaSet, open_replica
    from surge.backends.sql_sales import SqlSales

    replicas = ReplicaSet(
        [open_replica(url, options.db_pool_size) for url in options.replica_urls],
        options.replica_max_lag,
    )
    stack.push_async_callback(replicas.close)
    store.replicas = replicas
    assert isinstance(made.sales, SqlSales)
    made.sales.replicas = replicas
    made.replicas = replicas
    for replica in replicas.replicas:
        made.breakers[f"replica {replica.name}"] = replica.guard.breaker
    made.probes["database_replicas"] = replicas.check
    replicas.start()


def open_store(
    options: BackendOptions, stack: contextlib.AsyncExitStack, pool_size: int | None = None
) -> SqlStore:
    """The SQL store alone (the worker process and the CLI need no more)."""
    from surge.backends.sql import SqlStore, create_engine

    size = pool_size or options.db_pool_size
    store = SqlStore(create_engine(options.database_url, size), size)
    stack.push_async_callback(store.close)
    return store


async def open_stream(options: BackendOptions, stack: contextlib.AsyncExitStack) -> Stream:
    """The event stream: Redis Streams with Redis (on a pool of its own: blocking reads
    hold their connections), else an SQLite file in the data dir."""
    if options.redis_url is None:
        from surge.backends.sqlite_stream import SqliteStream

        stream: Stream = SqliteStream(options.data_dir / "events.db", options.dedup_ttl)
    else:
        from surge.backends.redis import connect
        from surge.backends.redis_stream import RedisStream

        # a command timeout above the blocking reads' 1 s
        client = connect(options.redis_url, options.stream_pool_size, command_timeout=3.0)
        stack.push_async_callback(client.aclose)
        stream = RedisStream(client, options.prefix, options.dedup_ttl)
    stack.push_async_callback(stream.close)
    return stream


def open_room_publisher(
    options: BackendOptions, stack: contextlib.AsyncExitStack, keep: int
) -> Callable[[str, bytes], Awaitable[int]] | None:
    """Publishing into the hub's rooms from a process that has no hub (`surge worker`):
    the same numbering, history (`keep` messages) and delivery as a hub's publish. None
    without Redis (then the worker runs inside `surge serve`, beside its hub)."""
    if options.redis_url is None:
        return None
    from surge.backends.redis import connect
    from surge.backends.redis_backplane import CLUSTER_SHARDS, RedisBackplane
    from surge.backends.redis_cluster import GuardedRedisCluster

    client = connect(options.redis_url, 4)
    stack.push_async_callback(client.aclose)
    shards = CLUSTER_SHARDS if isinstance(client, GuardedRedisCluster) else None
    plane = RedisBackplane(client, None, options.prefix, options.history_bytes, shards)
    return lambda room, data: plane.publish(room, data, keep)


def open_outbox(store: Store, name: str) -> Outbox:
    """The outbox of the store's database, relayed by the worker called `name`."""
    from surge.backends.sql import SqlStore
    from surge.backends.sql_outbox import SqlOutbox

    assert isinstance(store, SqlStore), "the outbox lives in the SQL database"
    return SqlOutbox(store.engine, name)


def open_mailbox(smtp_url: str | None, mbox_path: Path) -> MailSender:
    """SMTP for `smtp://` and `smtps://` URLs, else an mbox file (the embedded default)."""
    from surge.backends import mail

    return mail.open_mailbox(smtp_url, mbox_path)


# -- the shared state, by scheme ------------------------------------------------------------


def _in_process(
    options: BackendOptions,
    store: SqlStore,
    stack: contextlib.AsyncExitStack,
    _on_cache_error: ErrorHook | None,
) -> Backends:
    from surge.backends.memory import MemoryBus, MemoryCache
    from surge.backends.memory_backplane import LocalBackplane
    from surge.backends.memory_gate import MemoryGate
    from surge.backends.sql_sales import SqlSales

    cache = MemoryCache(max_entries=options.cache_entries)
    bus = MemoryBus()
    stack.push_async_callback(cache.close)
    stack.push_async_callback(bus.close)
    return Backends(
        store,
        SqlSales(store.engine, options.pay_window),
        cache,
        bus,
        MemoryGate(),
        LocalBackplane(options.history_bytes),
        LocalBuckets(),
        None,
    )


def _redis(
    options: BackendOptions,
    store: SqlStore,
    stack: contextlib.AsyncExitStack,
    on_cache_error: ErrorHook | None,
) -> Backends:
    from surge.backends.redis import RedisBus, RedisCache, connect, warm
    from surge.backends.redis_backplane import CLUSTER_SHARDS, RedisBackplane
    from surge.backends.redis_cluster import GuardedRedisCluster
    from surge.backends.redis_gate import RedisGate
    from surge.backends.redis_limits import RedisBuckets
    from surge.backends.redis_sharded_bus import ShardedBus
    from surge.backends.sql_sales import SqlSales

    url = options.redis_url
    assert url is not None
    client = connect(url, options.redis_pool_size)
    stack.push_async_callback(client.aclose)
    cache = RedisCache(client, options.prefix, on_cache_error)
    bus: Bus
    if isinstance(client, GuardedRedisCluster):
        cluster, bus = True, ShardedBus(client, options.prefix)
    else:
        cluster, bus = False, RedisBus(client, options.prefix)
    stack.push_async_callback(cache.close)
    stack.push_async_callback(bus.close)
    local = LocalBuckets()
    buckets = RedisBuckets(
        client, options.prefix, local, lambda exc: _limits_failed(buckets.failures, exc)
    )
    stack.push_async_callback(buckets.close)
    made = Backends(
        store,
        SqlSales(store.engine, options.pay_window),
        cache,
        bus,
        RedisGate(client, options.prefix),
        RedisBackplane(
            client, bus, options.prefix, options.history_bytes, CLUSTER_SHARDS if cluster else None
        ),
        local,
        buckets,
        _warm=[lambda: warm(client, options.redis_pool_size)],
    )
    made.breakers["redis"] = client.breaker
    made.probes["redis"] = cache.ping
    made.gauges["redis_in_flight"] = lambda: float(cache.in_flight)
    made.gauges["redis_pool_size"] = lambda: float(options.redis_pool_size)
    return made


def _limits_failed(failures: int, exc: Exception) -> None:
    if failures % 1000 == 1:  # the first, then every 1000th
        log.warning("rate limits: Redis failed (%s); this process decides", exc)


_SHARED: dict[
    str,
    Callable[[BackendOptions, SqlStore, contextlib.AsyncExitStack, ErrorHook | None], Backends],
] = {"memory": _in_process, "redis": _redis, "rediss": _redis}
