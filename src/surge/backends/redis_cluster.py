"""Redis Cluster: the client, and pub/sub on the cluster's shards.

`SURGE_REDIS_URL=redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]` names seed
nodes (`rediss+cluster://` for TLS). redis-py's cluster client learns the rest of the
cluster from them and follows failovers and slot moves (MOVED, ASK) by itself.

What makes the rest of Surge work unchanged on a cluster is its key names: every command
or script that touches several keys touches one hash slot (`{sale:ID}` for the gate,
`{rl}` for the rate limits, `{PREFIXevents}` for the event stream, `{rt:N}` for a shard
of the hub's rooms). The order cache's MGET is the one command whose keys spread over
the cluster: it is split per slot (`mget_nonatomic`; a cache read needs no atomicity).

Pub/sub: a plain PUBLISH on a cluster is copied to every node over the cluster bus, so
every message costs every shard. Here every channel is a shard channel instead (SPUBLISH
/ SSUBSCRIBE): a message goes to the node that owns its channel's slot, and each process
holds one subscriber connection per such node (`ShardedBus`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis import asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisClusterException, RedisError

from surge.backends.breaker import Breaker, Guard
from surge.ground.errors import count_as_unavailable
from surge.ground.interfaces import Handler
from surge.ground.redis_urls import ClusterAddress, parse_cluster_url

log = logging.getLogger("surge.redis")
# a slot with no master (mid-failover) escapes as RedisClusterException, which is not a
# RedisError: a 503 like any Redis failure, not a 500
count_as_unavailable(RedisClusterException)


class GuardedRedisCluster(RedisCluster):
    """The cluster client with the circuit breaker around every command and pipeline, as
    `surge.backends.redis.GuardedRedis`."""

    breaker: Breaker
    _guard: Guard
    address: ClusterAddress

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self._guard():
            return await super().execute_command(*args, **kwargs)

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        pipe = _GuardedClusterPipeline(self, transaction)  # type: ignore[abstract]
        pipe._guard = self._guard
        return pipe


class _GuardedClusterPipeline(ClusterPipeline):
    _guard: Guard

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        async with self._guard():
            return await super().execute(raise_on_error, allow_redirections)


def connect_cluster(
    url: str,
    pool_size: int,
    command_timeout: float,
    is_down: Callable[[BaseException], bool],
) -> GuardedRedisCluster:
    """A cluster client with `pool_size` connections per node. A command that meets a
    dead node is retried 3 times within about a tenth of a second (each retry after the
    cluster's map is read anew): past that, the slot is being failed over, and the
    breaker answers for it until a replica has taken over."""
    address = parse_cluster_url(url)
    client = GuardedRedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
        max_connections=pool_size,
        socket_connect_timeout=command_timeout,
        socket_timeout=command_timeout,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 3),
        **address.client_options(),
    )
    client.address = address
    client.breaker = Breaker("redis")
    client._guard = Guard(client.breaker, is_down)
    return client


def call_hooks(hooks: list[Callable[[], None]]) -> None:
    """A bus's reconnect hooks (messages may have been missed), each on its own: one that
    fails is logged and the others still run."""
    for hook in list(hooks):
        try:
            hook()
        except Exception:
            log.exception("reconnect hook failed")


@dataclass(slots=True)
class _Link:
    """The subscriber connection to one node, and the task that reads it."""

    client: aioredis.Redis
    pubsub: PubSub
    channels: set[str] = field(default_factory=set)
    reader: asyncio.Task[None] | None = None


class ShardedBus:
    """Pub/sub on a Redis Cluster's shard channels (SPUBLISH / SSUBSCRIBE).

    Written here rather than taken from redis-py's ClusterPubSub: that one reads its
    nodes' connections one after the other, each with the caller's timeout, so a message
    on one shard waits out the others' timeouts; here each node's connection has a reader
    of its own.

    When a node's connection fails (the node died, a failover) or a node tells us a
    channel moved (SUNSUBSCRIBE after a slot migration), every subscription is made anew
    from the cluster's current map, and the `on_reconnect` hooks are called: messages sent
    meanwhile are lost, as with `RedisBus`.
    """

    def __init__(self, cluster: GuardedRedisCluster, prefix: str) -> None:
        self._cluster = cluster
        self._prefix = prefix
        self._handlers: dict[str, list[Handler]] = defaultdict(list)  # full channel name
        self._hooks: list[Callable[[], None]] = []
        self._links: dict[str, _Link] = {}  # node name -> its link
        self._lock = asyncio.Lock()  # one change of the links at a time
        self._stale = asyncio.Event()  # a link failed: subscribe everything anew
        self._keeper: asyncio.Task[None] | None = None

    async def publish(self, channel: str, message: bytes) -> None:
        await self._cluster.spublish(self._prefix + channel, message)

    async def subscribe(self, channel: str, handler: Handler) -> None:
        """Subscribes now, or, with the cluster unreachable, as soon as it answers."""
        full = self._prefix + channel
        self._handlers[full].append(handler)
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep(), name="redis-sharded-bus")
        if len(self._handlers[full]) > 1 or self._stale.is_set():
            return
        try:
            async with self._lock:
                await self._listen(full)
        except (RedisError, RedisClusterException, OSError) as exc:
            log.warning("pub/sub unavailable (%s): subscribing once Redis is back", exc)
            self._stale.set()

    def on_reconnect(self, hook: Callable[[], None]) -> None:
        self._hooks.append(hook)

    async def _listen(self, channel: str) -> None:
        await self._cluster.initialize()  # once: the cluster's map (no-op afterwards)
        node = self._cluster.get_node_from_key(channel)
        if node is None:
            raise RedisClusterException(f"no node serves the slot of {channel}")
        link = self._links.get(node.name)
        if link is None:
            client = aioredis.Redis(
                host=node.host,
                port=int(node.port),
                socket_connect_timeout=1.0,
                health_check_interval=30,
                **self._cluster.address.client_options(),
            )
            link = _Link(client, client.pubsub())
            self._links[node.name] = link
        await link.pubsub.ssubscribe(channel)
        link.channels.add(channel)
        if link.reader is None:
            link.reader = asyncio.create_task(self._read(link), name=f"redis-shard-{node.name}")

    async def _read(self, link: _Link) -> None:
        strip = len(self._prefix)
        try:
            while True:
                message = await link.pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                kind = message["type"]
                if kind == "sunsubscribe":  # the channel's slot moved to another node
                    log.warning("pub/sub: %s moved; subscribing anew", message["channel"])
                    break
                if kind != "smessage":
                    continue
                for handler in list(self._handlers.get(message["channel"].decode(), ())):
                    try:
                        handler(message["data"])
                    except Exception:
                        log.exception("pub/sub handler for %s failed", message["channel"][strip:])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("pub/sub connection to a shard lost (%s)", exc)
        self._stale.set()

    async def _keep(self) -> None:
        """Makes every subscription anew whenever a link went stale, with backoff."""
        delay = 0.05
        while True:
            await self._stale.wait()
            async with self._lock:
                self._stale.clear()
                await self._close_links()
                try:
                    await self._cluster.nodes_manager.initialize()  # read the map anew
                    for channel in list(self._handlers):
                        await self._listen(channel)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("pub/sub: resubscribing failed (%s); again in %.2fs", exc, delay)
                    self._stale.set()
                else:
                    delay = 0.05
                    self._reconnected()
                    continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _reconnected(self) -> None:
        log.warning("pub/sub resubscribed; messages sent meanwhile may be lost")
        call_hooks(self._hooks)

    async def _close_links(self) -> None:
        links, self._links = list(self._links.values()), {}
        for link in links:
            if link.reader is not None and link.reader is not asyncio.current_task():
                link.reader.cancel()
                await asyncio.gather(link.reader, return_exceptions=True)
            with contextlib.suppress(Exception):
                await link.pubsub.aclose()  # type: ignore[no-untyped-call]
            with contextlib.suppress(Exception):
                await link.client.aclose()

    async def ping(self) -> None:
        await self._cluster.ping()

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        await self._close_links()
