"""Redis cache and pub/sub.

Callers read many keys at once (MGET) and fills of one event-loop turn go out as one
pipeline: under load a few hundred concurrent misses cost one round trip instead of a few
hundred (the client's per-command cost, not Redis, is the bottleneck in Python).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, cast

from redis import asyncio as aioredis
from redis.asyncio.client import Pipeline, PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    MaxConnectionsError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from surge.backends.breaker import Breaker, Guard
from surge.backends.redis_cluster import GuardedRedisCluster, connect_cluster
from surge.backends.redis_sharded_bus import call_hooks
from surge.ground.errors import count_as_unavailable
from surge.ground.interfaces import Handler
from surge.ground.redis_urls import is_cluster
from surge.ground.tasks import Tasks

log = logging.getLogger("surge.redis")
# a Redis error that escapes a handler answers 503, not 500 (surge.protect.deadlines)
count_as_unavailable(RedisError)


def redis_down(error: BaseException) -> bool:
    """Whether `error` means Redis is down or unreachable (a script error or WRONGTYPE
    means it answered). A pool with no free connection is our own load, not Redis. On a
    cluster, a slot without a master (mid-failover) is down too."""
    if isinstance(error, MaxConnectionsError):
        return False
    if isinstance(error, RedisClusterException) and not isinstance(error, SlotNotCoveredError):
        # no node of the cluster answered; any other (client-side misuse) is a bug of ours
        return str(error).startswith("Redis Cluster cannot be connected")
    if isinstance(error, RedisConnectionError):
        return str(error) != "No connection available."
    return isinstance(
        error,
        RedisTimeoutError | OSError | TimeoutError | ClusterDownError | SlotNotCoveredError,
    )


class GuardedRedis(aioredis.Redis):
    """The redis-py client with a circuit breaker around every command and pipeline:
    while Redis is down a call fails in microseconds (`Unavailable`), not after a
    connect timeout (see surge.backends.breaker). Pub/sub has its own connection and its
    own reconnection (RedisBus)."""

    breaker: Breaker
    _guard: Guard

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        async with self._guard():
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = _GuardedPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )
        pipe._guard = self._guard
        return pipe


class _GuardedPipeline(Pipeline):
    _guard: Guard

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        async with self._guard():
            return await super().execute(raise_on_error)


# What `connect` gives: one server, or a cluster (the commands Surge uses are the same)
Client = GuardedRedis | GuardedRedisCluster


def connect(url: str, pool_size: int, timeout: float = 2.0, command_timeout: float = 0.5) -> Client:
    """A client whose pool waits (up to `timeout`) for a free connection instead of
    failing, and gives up on a connect or a reply after `command_timeout`: Redis answers
    in well under a millisecond, so past that it is down or unreachable and the breaker
    counts it. Half a second: with less, a loop lagging under load times out replies
    Redis did send (the timeout runs on the loop's clock), and a reservation the gate made
    but whose answer was lost stays taken (seen at 250 ms under the parallel test suite);
    with 1 s, a purchase making three calls to a hung Redis outlived its 2 s deadline.
    A `redis+cluster://` URL gives the cluster client (surge.backends.redis_cluster), with
    `pool_size` connections per node."""
    if is_cluster(url):
        return connect_cluster(url, pool_size, command_timeout, redis_down)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=pool_size,
        timeout=timeout,
        socket_connect_timeout=command_timeout,
        socket_timeout=command_timeout,
        health_check_interval=30,
        # once, at once, on a new connection: after a Redis restart every pooled
        # connection is dead and its first command would fail (a timeout is not retried:
        # a hung Redis must cost one command timeout, not two)
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        retry_on_error=[RedisConnectionError],
    )
    # the client owns the pool: aclose() closes it
    client = cast(GuardedRedis, GuardedRedis.from_pool(pool))
    client.breaker = Breaker("redis")
    client._guard = Guard(client.breaker, redis_down)
    return client


async def warm(client: Client, connections: int) -> None:
    """Opens `connections` pooled connections now rather than in a storm's first burst
    (see SqlStore.warm). A cluster client reads the cluster's map and opens one
    connection to each master."""
    if isinstance(client, RedisCluster):
        await client.initialize()
        await client.ping(target_nodes=RedisCluster.PRIMARIES)
        return
    pool = client.connection_pool
    held = []
    try:
        for _ in range(connections):
            held.append(await pool.get_connection())  # type: ignore[no-untyped-call]
    finally:
        for connection in held:
            await pool.release(connection)


MAX_FILL = 1_000  # keys a fill pipeline carries
MAX_PENDING_FILLS = 50_000  # keys waiting for one; past it the oldest are dropped (a fill
# only saves a later lookup, and this bounds the memory a stalled Redis can hold up)


class RedisCache:
    def __init__(
        self,
        client: Client,
        prefix: str,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self._client = client
        # a cluster's MGET takes keys of one slot only: there it is split per slot
        self._mget = client.mget_nonatomic if isinstance(client, RedisCluster) else client.mget
        self._prefix = prefix
        self._on_error = on_error
        self._sets: list[tuple[str, bytes, int]] = []
        self._filling = False  # a fill pipeline is under way
        self.in_flight = 0  # Redis commands under way (the pool-use gauge)
        self._tasks = Tasks()

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        self.in_flight += 1
        try:
            values = await self._mget([self._prefix + k for k in keys])
        finally:
            self.in_flight -= 1
        return values  # type: ignore[return-value]  # bytes: decode_responses is off

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._client.set(self._prefix + key, value, px=max(1, int(ttl * 1000)))

    def set_soon(self, key: str, value: bytes, ttl: float) -> None:
        """Writes in the background. One pipeline at a time: what is set while one runs
        goes in the next (a cold start fills thousands of keys a second, and a pipeline
        costs redis-py about as much for one key as for fifty)."""
        sets = self._sets
        if len(sets) >= MAX_PENDING_FILLS:  # Redis slower than the fills: the oldest go
            del sets[: len(sets) // 10 + 1]
            log.warning("cache fill: Redis is behind, fills dropped")
        sets.append((self._prefix + key, value, max(1, int(ttl * 1000))))
        if len(sets) == 1 and not self._filling:
            asyncio.get_running_loop().call_soon(self._flush_sets)

    def _flush_sets(self) -> None:
        if self._filling or not self._sets:
            return
        batch, self._sets = self._sets[:MAX_FILL], self._sets[MAX_FILL:]
        self._filling = True
        self._tasks.spawn(self._pipeline_sets(batch), shared=False)

    async def _pipeline_sets(self, batch: list[tuple[str, bytes, int]]) -> None:
        self.in_flight += 1
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value, px in batch:
                    pipe.set(key, value, px=px)
                await pipe.execute()
        except Exception as exc:
            if self._on_error is not None:
                self._on_error(exc)
            log.warning("cache fill of %d keys failed: %s", len(batch), exc)
        finally:
            self.in_flight -= 1
            self._filling = False
            self._flush_sets()

    async def delete(self, *keys: str) -> None:
        if keys:
            full = {self._prefix + key for key in keys}
            if self._sets:  # a fill still waiting would bring a deleted value back
                self._sets = [entry for entry in self._sets if entry[0] not in full]
            await self._client.delete(*full)

    async def ping(self) -> None:
        await self._client.ping()

    async def close(self) -> None:
        await self._tasks.cancel()


class RedisBus:
    """Redis pub/sub; one subscriber connection per process, re-established after a loss.

    Messages published while the subscriber was disconnected are lost (pub/sub keeps
    nothing), so every reconnection, whether redis-py made it transparently or we did,
    calls the `on_reconnect` hooks: the order query clears its near cache there.
    """

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._hooks: list[Callable[[], None]] = []
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None

    async def publish(self, channel: str, message: bytes) -> None:
        await self._client.publish(self._prefix + channel, message)

    async def subscribe(self, channel: str, handler: Handler) -> None:
        """Subscribes now, or, with Redis down, as soon as it is back (a process may start
        while Redis is down: it serves what the degraded modes allow meanwhile)."""
        self._handlers[channel].append(handler)
        try:
            if self._pubsub is not None:
                await self._pubsub.subscribe(self._prefix + channel)
            elif self._reader is None:  # (else the reader is reopening: it takes them all)
                await self._open()
        except (RedisError, OSError) as exc:
            log.warning("pub/sub unavailable (%s): subscribing once Redis is back", exc)
            await self._drop()
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name="redis-bus-reader")

    async def _drop(self) -> None:
        """Forgets the subscriber connection; the reader opens a new one."""
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def on_reconnect(self, hook: Callable[[], None]) -> None:
        self._hooks.append(hook)

    async def _open(self) -> None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*(self._prefix + c for c in self._handlers))
        except BaseException:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        if pubsub.connection is not None:
            # registered after the first connect: every call is a reconnection
            pubsub.connection.register_connect_callback(self._reconnected)
        self._pubsub = pubsub

    def _reconnected(self, _connection: object) -> None:
        log.warning("pub/sub reconnected; messages sent meanwhile may be lost")
        call_hooks(self._hooks)

    async def _read(self) -> None:
        strip = len(self._prefix)
        delay = 0.05
        while True:
            try:
                if self._pubsub is None:  # down since start-up, or since the last loss
                    await self._open()
                    delay = 0.05
                    self._reconnected(None)
                    continue
                message = await self._pubsub.get_message(timeout=1.0)
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pub/sub connection lost (%s); retrying in %.2fs", exc, delay)
                await self._drop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"].decode()[strip:]
            for handler in list(self._handlers.get(channel, ())):
                try:
                    handler(message["data"])
                except Exception:
                    log.exception("pub/sub handler for %s failed", channel)

    async def ping(self) -> None:
        await self._client.ping()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
